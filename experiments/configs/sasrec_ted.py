"""Ablation: SASRec with TED (one short-query branch, transition distillation kept)."""

from mqsa_ted import get_config as mqsa_ted_config


def get_config(dataset: str = "beauty") -> dict:
    return {**mqsa_ted_config(dataset), "windows": (1,), "window_weights": (1.0,)}
