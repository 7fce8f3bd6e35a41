"""SASRec as the one-branch case of the same model: windows (1,), no distillation."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("mqsa_ted", Path(__file__).with_name("mqsa_ted.py"))
_mqsa_ted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mqsa_ted)


def get_config(dataset: str = "beauty") -> dict:
    return {**_mqsa_ted.get_config(dataset), "windows": (1,), "window_weights": (1.0,),
            "lambda_kd": 0.0}
