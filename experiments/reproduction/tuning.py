"""The searches behind the tuned variants: one ``mqsa-jax tune`` study per dataset and model, on
validation NDCG@20, with the same space and budget for SASRec and MQSA-TED.

    python -m experiments.reproduction.tuning --dataset yelp --model mqsa_ted [--trials 20]
        [--epochs 30] [--runs runs/tuning] [--workers 2]

Each study's database is ``experiments/results/tuning/<dataset>_<model>.db``: committed, so a
search stopped here goes on from another machine (its trials' run directories, checkpoints
included, stay under ``--runs`` on the machine that trained them).  After the study stops, its
summary is copied beside the database (``<dataset>_<model>.md``); once it has all its trials,
its best trial too (``_best.json``: the values the tuned variants' config files take,
``experiments/configs/*_tuned.py``); and the reproduction's summary and README, which report
each study's best and budget, are rewritten.  The searched fields: dropout, L2 and the learning
rate for both models; for MQSA-TED also lambda_kd and tau.  ``--workers K`` runs K ``tune``
processes on the study at once, each on its own share of the cores (on a CPU machine, one per
core trains more trials an hour).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna

from experiments.reproduction.plan import CONFIGS, DEFAULT_RESULTS
from experiments.reproduction.reproduce import write_summary
from experiments.reproduction.runner import (
    core_share,
    interrupt_on_sigterm,
    start_on_cores,
    stop,
    worker_count,
)
from mqsa_jax.io import write_json_atomic
from mqsa_jax.quiet import logger_level

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
            "--storage", _storage(name),
            *[a for p in SPACES[model] for a in ("--param", p)]]


def _storage(name: str) -> str:
    return f"sqlite:///{(TUNING / name).with_suffix('.db').resolve()}"


def _wait_for_study(name: str, first: subprocess.Popen) -> None:
    """Until the first worker has set the study up (its record, its first trial queued): workers
    opening a new study at once would each queue the base config."""
    while first.poll() is None:
        with logger_level("optuna", logging.WARNING):
            if name in optuna.get_all_study_names(_storage(name)) and optuna.load_study(
                    study_name=name, storage=_storage(name)).user_attrs:
                return
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=("beauty", "sports", "toys", "yelp"))
    parser.add_argument("--model", required=True, choices=tuple(SPACES))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30,
                        help="per trial: yelp and sports peak by epoch 15-25 on the reference")
    parser.add_argument("--runs", type=Path, default=Path("runs/tuning"))
    parser.add_argument("--workers", type=worker_count, default=1,
                        help="tune processes at once, each on its own share of the cores")
    args = parser.parse_args()
    TUNING.mkdir(parents=True, exist_ok=True)
    name = f"{args.dataset}_{args.model}"
    interrupt_on_sigterm()
    workers: list[subprocess.Popen] = []
    try:
        for worker in range(args.workers):
            workers.append(start_on_cores(command(args.dataset, args.model, args.trials,
                                                  args.epochs, args.runs),
                                          core_share(worker, args.workers)))
            if worker == 0 and args.workers > 1:
                _wait_for_study(name, workers[0])
        codes = [worker.wait() for worker in workers]
    except KeyboardInterrupt:  # each worker leaves its trial to be taken up again
        codes = [code or 130 for code in stop(workers)]
    code = next((c for c in codes if c), 0)
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
