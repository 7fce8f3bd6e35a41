"""The values a search on validation found for a dataset (``experiments/reproduction/tuning.py``):
its best trial's searched fields, which the tuned variants put over their reference config."""

import json
from pathlib import Path

TUNING = Path(__file__).resolve().parents[1] / "results" / "tuning"


def tuned_values(dataset: str, model: str) -> dict:
    """The best trial's values of the study of ``model`` on ``dataset``."""
    path = TUNING / f"{dataset}_{model}_best.json"
    if not path.exists():
        raise FileNotFoundError(f"{model} has no finished search on {dataset} yet ({path}): "
                                f"python -m experiments.reproduction.tuning --dataset {dataset} "
                                f"--model {model}")
    return json.loads(path.read_text())["params"]
