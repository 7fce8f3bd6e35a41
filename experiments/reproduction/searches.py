"""The searches behind the tuned variants, as their committed study databases hold them
(``<results>/tuning/<dataset>_<model>.db``, :mod:`experiments.reproduction.tuning`): per study,
the best trial against the reference config's and what the search has spent, for the report and
the README."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from experiments.reproduction.plan import TUNED_ORDERING, VARIANTS
from mqsa_jax.evaluation import SELECTION_METRIC
from mqsa_jax.quiet import logger_level
from mqsa_jax.tune_report import best_row, budget, budget_line, counted, trial_rows


def study_facts(database: Path) -> dict:
    """One study's facts: ``finished`` (it has all its trials: its best values were written
    beside it), ``epochs`` (per trial), ``best`` and ``reference`` (the trial row of
    the best complete trial, and of the first counted trial with the base config's values;
    either may be None), ``budget`` (:func:`mqsa_jax.tune_report.budget`)."""
    with logger_level("optuna", logging.WARNING):
        study = optuna.load_study(study_name=database.stem, storage=f"sqlite:///{database}")
    rows, base = trial_rows(study), study.user_attrs["base"]
    reference = [r for r in rows if counted(r)
                 and all(base.get(name) == value for name, value in r["params"].items())]
    return {"finished": database.with_name(f"{database.stem}_best.json").exists(),
            "epochs": base["epochs"], "budget": budget(rows),
            "best": best_row(rows),
            "reference": reference[0] if reference else None}


def searches(results: Path) -> dict[str, dict[str, dict]]:
    """dataset -> model -> :func:`study_facts`, for each study database under
    ``results/tuning``."""
    found: dict[str, dict[str, dict]] = {}
    for database in sorted((results / "tuning").glob("*.db")):
        dataset, model = database.stem.split("_", 1)
        if f"{model}_tuned" in TUNED_ORDERING:
            found.setdefault(dataset, {})[model] = study_facts(database)
    order = [variant.removesuffix("_tuned") for variant in TUNED_ORDERING]
    return {dataset: dict(sorted(models.items(), key=lambda item: order.index(item[0])))
            for dataset, models in found.items()}


def search_line(dataset: str, model: str, facts: dict, folder: str = "tuning") -> str:
    """A study in one paragraph: its best trial, the reference config's trial, its budget
    (``folder``: where the study's summary is, as the reader's document links it)."""
    line = (f"Search for {VARIANTS[model]} (`{folder}/{dataset}_{model}.md`, "
            f"validation {SELECTION_METRIC}, trials of {facts['epochs']} epochs): ")
    if best := facts["best"]:
        values = ", ".join(f"{name} {value:.4g}" for name, value in best["params"].items())
        line += (f"{'best' if facts['finished'] else 'search going on, best so far'}: trial "
                 f"{best['number']}, {best['value']:.4f} ({values})")
        if (reference := facts["reference"]) and reference["number"] == best["number"]:
            line += ", the reference config itself"
        elif reference and reference["state"] == "complete":
            line += (f", against {reference['value']:.4f} for the reference config (trial "
                     f"{reference['number']})")
        elif reference:
            line += (f"; the reference config's trial ({reference['number']}) was pruned at "
                     f"epoch {reference['last_epoch']}")
    else:
        line += "no trial complete yet"
    return line + f". Budget: {budget_line(facts['budget'])}"
