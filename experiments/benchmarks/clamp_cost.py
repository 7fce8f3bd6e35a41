"""What TED's clamp costs: how many student rows take its extra catalogue passes, and what an
epoch costs when most do.

    python -m experiments.benchmarks.clamp_cost --runs RUN_DIR... [--taus 0.1 0.01] [--epochs 3]

A student row takes the clamp's extra blocked pass forward and backward (``mqsa_jax.blocked``)
when one of its probabilities falls below 1e-15.  The share of such rows is read from each run's
latest checkpoint, over 20 batches of random users packed as in training (dropout on).  Then
beauty's sweep config is trained for a few epochs at each ``tau``, in turn in one process; an
epoch's figure is the median of the epochs after the first (which compiles).  Time it alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from experiments.markdown import table
from experiments.measure import machine_line
from mqsa_jax import blocked
from mqsa_jax.config import build_config, read_run_config
from mqsa_jax.config_files import load_config_file
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.model import item_table
from mqsa_jax.packing import Packing
from mqsa_jax.rundir import RunDir
from mqsa_jax.runs import prepare_data, restore_trained
from mqsa_jax.teacher import ted_students
from mqsa_jax.train import train

SWEEP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sweep.py"


def clamp_share(run_dir: Path, batches: int = 20) -> dict:
    """The share of student rows that need the clamp at a run's latest checkpoint."""
    config = read_run_config(run_dir)
    data = prepare_data(config)
    _, state, progress = restore_trained(run_dir, "latest", config, data.num_items)
    table_rows = item_table(state.params)
    packing = Packing(data, config.train.batch_size)
    size = batches * config.train.batch_size
    users = np.random.default_rng(0).permutation(data.num_users)[:size]
    clamped = rows = 0
    for index, (batch, _) in enumerate(packing.batches(users)):
        heads = batch.items[batch.segments > 0]
        students = ted_students(table_rows[heads], jax.random.key(index), config.model.dropout,
                                config.loss.tau)
        # The step's own decision: the correction is 0 exactly for the rows it leaves out.
        _, correction = blocked.catalogue_sums(students, table_rows, 0, data.num_items)
        clamped += int((correction > 0).sum())
        rows += len(heads)
    return {"run": str(run_dir), "epoch": progress.epoch, "tau": config.loss.tau,
            "lambda_kd": config.loss.lambda_kd, "student_rows": rows, "clamped": clamped}


def epoch_seconds(tau: float, epochs: int) -> list[float]:
    """Each epoch's training seconds of beauty's sweep config at ``tau``, trained afresh."""
    values = load_config_file(SWEEP_CONFIG, f"beauty,tau={tau}")
    config = build_config(values, {"epochs": epochs, "eval_every": epochs})
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp), progress=False)
        return [record["train_seconds"] for record in RunDir(tmp).metrics()]


def report(shares: list[dict], timings: dict[float, list[float]], machine: str) -> str:
    """The markdown of both measurements."""
    lines = ["# What TED's clamp costs", "", f"Machine: {machine}.", "",
             "Command: `python -m experiments.benchmarks.clamp_cost "
             f"{' '.join(sys.argv[1:])}`.", "",
             "## Student rows that take the clamp's extra passes", ""]
    lines += table(["run", "epoch", "tau", "lambda_kd", "clamped rows", "share"],
                   [(s["run"], s["epoch"], s["tau"], s["lambda_kd"],
                     f"{s['clamped']} of {s['student_rows']}",
                     f"{s['clamped'] / s['student_rows']:.2%}") for s in shares])
    lines += ["", "## Beauty epochs, trained afresh at each tau in turn", ""]
    lines += table(["tau", "seconds per epoch (each)", "median after the first"],
                   [(tau, ", ".join(f"{s:.1f}" for s in secs), f"{statistics.median(secs[1:]):.1f}")
                    for tau, secs in timings.items()])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, nargs="*", default=[])
    parser.add_argument("--taus", type=float, nargs="*", default=[0.1, 0.01])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/clamp_cost"))
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch compiles, and is not counted")
    shares = [clamp_share(run) for run in args.runs]
    timings = {tau: epoch_seconds(tau, args.epochs) for tau in args.taus}
    machine = machine_line()
    write_json_atomic(args.out.with_suffix(".json"),
                      {"machine": machine, "clamp_share": shares, "epoch_seconds": timings})
    write_text_atomic(args.out.with_suffix(".md"), report(shares, timings, machine))


if __name__ == "__main__":
    main()
