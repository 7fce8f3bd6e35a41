"""Runs an hour on a CPU machine: one training run on all the cores, against one run per core at
once (``--workers``, :func:`experiments.reproduction.runner.core_share`).

    python -m experiments.benchmarks.core_workers [--config experiments/configs/mqsa_ted.py:yelp]
        [--epochs 2] [--rounds 2] [--out experiments/results/core_workers]

Each round trains the config for ``--epochs`` epochs once alone on every core, and once as one
run per core at the same time, the order flipped each round.  Reported: each run's seconds per
epoch (its last epoch: its steps compiled) and wall seconds, and the epochs an hour each way
trains, from the last epochs' training and evaluation seconds.  Alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.measure import machine_line
from experiments.reproduction.runner import core_share, start_on_cores
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.rundir import RunDir


def _train(config: str, epochs: int, workers: int, work: Path) -> list[dict]:
    """``workers`` runs of ``config`` at once, one per share of the cores: per run, its last
    epoch's training and evaluation seconds and its wall seconds."""
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    processes = [start_on_cores(
        [sys.executable, "-m", "mqsa_jax.cli", "train", "--config", config, "--set",
         f"epochs={epochs}", "--no-progress", "--run-dir", str(work / str(k))],
        core_share(k, workers), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for k in range(workers)]
    codes = [p.wait() for p in processes]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a run failed (exit codes {codes}); see {work}")
    last = [RunDir(work / str(k)).metrics()[-1] for k in range(workers)]
    return [{"train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"],
             "wall_seconds": round(wall, 2)} for r in last]


def epochs_per_hour(runs: list[dict]) -> float:
    """Epochs an hour of runs going on at once (each at its last epoch's pace)."""
    return sum(3600 / (r["train_seconds"] + r["eval_seconds"]) for r in runs)


def markdown(report: dict) -> str:
    workers = report["workers"]
    lines = [f"# One run per core ({report['date']}; {report['machine']})", "",
             f"Command: `{report['command']}`, alone. Per round: `{report['config']}` for "
             f"{report['epochs']} epochs, alone on all {workers} cores, and {workers} runs at "
             "once, each on one core (XLA's intra-op threads off); the order flipped each "
             "round. Seconds of each run's last epoch (training + evaluation).", "",
             "| round | one run, all cores: s per epoch | wall s | one run per core: s per "
             "epoch | wall s | epochs an hour: one run | one per core |", "|" + "---|" * 7]
    for k, r in enumerate(report["rounds"], 1):
        alone, shared = r["alone"], r["per_core"]
        lines.append(" | ".join([
            f"| {k}", f"{alone[0]['train_seconds'] + alone[0]['eval_seconds']:.1f}",
            f"{alone[0]['wall_seconds']:.1f}",
            ", ".join(f"{s['train_seconds'] + s['eval_seconds']:.1f}" for s in shared),
            f"{shared[0]['wall_seconds']:.1f}", f"{epochs_per_hour(alone):.0f}",
            f"{epochs_per_hour(shared):.0f}"]) + " |")
    gain = report["median_gain"]
    return "\n".join(lines + ["", f"Median over the rounds: one run per core trains "
                                  f"**{gain:+.1%}** epochs an hour.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/configs/mqsa_ted.py:yelp")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="experiments/results/core_workers")
    args = parser.parse_args()
    workers = len(os.sched_getaffinity(0))
    report = {"command": "python -m experiments.benchmarks.core_workers " + " ".join(sys.argv[1:]),
              "machine": machine_line(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "config": args.config, "epochs": args.epochs, "workers": workers, "rounds": []}
    with tempfile.TemporaryDirectory() as work:
        for k in range(args.rounds):
            order = ("alone", "per_core") if k % 2 == 0 else ("per_core", "alone")
            round_ = {way: _train(args.config, args.epochs, 1 if way == "alone" else workers,
                                  Path(work) / way) for way in order}
            report["rounds"].append(round_)
            report["median_gain"] = float(np.median(
                [epochs_per_hour(r["per_core"]) / epochs_per_hour(r["alone"]) - 1
                 for r in report["rounds"]]))
            write_json_atomic(Path(f"{args.out}.json"), report)  # partial results
    write_text_atomic(Path(f"{args.out}.md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
