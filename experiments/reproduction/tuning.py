"""The searches behind the tuned variants: one ``mqsa-jax tune`` study per dataset and model, on
validation NDCG@20, with the same space and budget for SASRec and MQSA-TED.

    python -m experiments.reproduction.tuning --dataset yelp --model mqsa_ted [--trials 20]
        [--epochs 30] [--runs runs/tuning]

Each study's database is ``experiments/results/tuning/<dataset>_<model>.db``: committed, so a
search stopped here goes on from another machine (its trials' run directories, checkpoints
included, stay under ``--runs`` on the machine that trained them).  After the study stops, its
summary is copied beside the database (``<dataset>_<model>.md``); once it has all its trials,
its best trial too (``_best.json``: the values the tuned variants' config files take,
``experiments/configs/*_tuned.py``); and the reproduction's summary and README, which report
each study's best and budget, are rewritten.  The searched fields: dropout, L2 and the learning
rate for both models; for MQSA-TED also lambda_kd and tau.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from experiments.reproduction.plan import CONFIGS, DEFAULT_RESULTS
from experiments.reproduction.reproduce import write_summary
from mqsa_jax.io import write_json_atomic

SHARED_SPACE = ("dropout=0.2:0.7", "l2_reg=log:1e-6:1e-3", "learning_rate=log:3e-4:3e-3")
SPACES = {"sasrec": SHARED_SPACE,
          "mqsa_ted": (*SHARED_SPACE, "lambda_kd=log:0.01:1", "tau=log:0.02:1")}
TUNING = DEFAULT_RESULTS / "tuning"


def command(dataset: str, model: str, trials: int, epochs: int, runs: Path) -> list[str]:
    """The ``mqsa-jax tune`` command of one study."""
    name = f"{dataset}_{model}"
    return [sys.executable, "-m", "mqsa_jax.cli", "tune", "--config",
            f"{CONFIGS / model}.py:{dataset}", "--trials", str(trials), "--epochs", str(epochs),
            "--study-dir", str(runs / name), "--study-name", name,
            "--storage", f"sqlite:///{(TUNING / name).with_suffix('.db').resolve()}",
            *[a for p in SPACES[model] for a in ("--param", p)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=("beauty", "sports", "toys", "yelp"))
    parser.add_argument("--model", required=True, choices=tuple(SPACES))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30,
                        help="per trial: yelp and sports peak by epoch 15-25 on the reference")
    parser.add_argument("--runs", type=Path, default=Path("runs/tuning"))
    args = parser.parse_args()
    TUNING.mkdir(parents=True, exist_ok=True)
    name = f"{args.dataset}_{args.model}"
    code = subprocess.call(command(args.dataset, args.model, args.trials, args.epochs,
                                   args.runs))
    study_dir = args.runs / name
    if (study_dir / "summary.json").exists():
        shutil.copyfile(study_dir / "summary.md", TUNING / f"{name}.md")
        best = json.loads((study_dir / "summary.json").read_text())["best"]
        if code == 0 and best is not None:  # all its trials: the tuned variant's config
            write_json_atomic(TUNING / f"{name}_best.json", best)
    write_summary(DEFAULT_RESULTS)  # summary.md and the README report each study's standing
    sys.exit(code)


if __name__ == "__main__":
    main()
