"""Ablation: MQSA without TED (both query branches, no transition distillation)."""

from mqsa_ted import get_config as mqsa_ted_config


def get_config(dataset: str = "beauty") -> dict:
    return {**mqsa_ted_config(dataset), "lambda_kd": 0.0}
