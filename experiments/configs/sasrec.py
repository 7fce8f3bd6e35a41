"""SASRec as the one-branch case of the same model: windows (1,), no distillation."""

from mqsa_ted import get_config as mqsa_ted_config


def get_config(dataset: str = "beauty") -> dict:
    return {**mqsa_ted_config(dataset), "windows": (1,), "window_weights": (1.0,),
            "lambda_kd": 0.0}
