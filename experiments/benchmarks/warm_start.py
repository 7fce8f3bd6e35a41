"""Warm start's benefit: yesterday's model on today's grown log, against a cold start.

A drifting synthetic log (:mod:`experiments.benchmarks.drifting_log`: items keep arriving,
popularity follows them) is cut twice: the "old" log holds the events before day ``T1``, the
"grown" one every event to day ``T2``.  Each is imported with a temporal split whose cutoff
leaves its last ``--target-days`` days for the targets.  A run trains on the old log; then two
runs train on the grown one with the same config, one cold (from the seed), one warm
(``--init-from`` the old run's best checkpoint).  Reported: validation NDCG@20 per epoch, the
epochs and training seconds each needs to reach the cold run's best, and the test figures at
the epoch chosen on validation.

    python -m experiments.benchmarks.warm_start [--work /tmp/warm_start] [--epochs 25]

Every run resumes where it stopped (``train --resume``), so an interrupted study goes on from
its last checkpoint; the results (``warm_start.json``, ``.md`` in ``--results``) are rewritten
after each run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from experiments.benchmarks.drifting_log import DAY, EPOCH_START, drifting_events, write_csv
from experiments.markdown import table
from experiments.measure import machine, machine_line
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.rundir import RunDir

HERE = Path(__file__).resolve().parents[1]  # experiments/
METRIC = "NDCG@20"
REPORTED = ("HR@5", "NDCG@5", "HR@20", "NDCG@20", "MRR")


def _date(day: float) -> str:
    """Day ``day`` of the log as the ISO date-time ``--cutoff`` takes."""
    return datetime.datetime.fromtimestamp(EPOCH_START + day * DAY, datetime.UTC).isoformat()


def _cli(*args: str, cache: Path | None = None) -> None:
    """``mqsa-jax args``; with ``cache``, its compilation cache there (each run pays its own
    compilation: a run of the same shapes after another would find its steps compiled)."""
    env = {**os.environ, **({"JAX_COMPILATION_CACHE_DIR": str(cache)} if cache else {})}
    subprocess.run([sys.executable, "-m", "mqsa_jax.cli", *args], check=True, env=env)


def prepare(work: Path, args) -> Path:
    """Writes the two logs and imports them (once); returns the data directory."""
    data = work / "data"
    user, item, time = drifting_events(args.users, args.items, args.t2, seed=args.seed)
    for name, last_day in (("old", args.t1), ("grown", args.t2)):
        if (data / "imported" / f"{name}.npz").exists():
            continue
        log = work / f"{name}.csv"
        before = time < EPOCH_START + last_day * DAY
        write_csv(log, user[before], item[before], time[before])
        _cli("data", "import", str(log), "--format", "csv", "--name", name, "--split",
             "temporal", "--cutoff", _date(last_day - args.target_days), "--data-dir",
             str(data), "--replace")
    return data


def train(run: Path, dataset: str, data: Path, epochs: int, init_from: Path | None) -> None:
    """Trains (or resumes, or leaves as it is when finished) one run."""
    if RunDir(run).results_file.exists():
        return
    where = ["--resume", str(run)] if RunDir(run).holds_run() else [
        "--run-dir", str(run), "--dataset", dataset, "--epochs", str(epochs),
        *(["--init-from", str(init_from)] if init_from else [])]
    _cli("train", *where, "--data-dir", str(data), "--no-progress",
         cache=run.parent / "compilation_cache" / run.name)


def curve(run: Path) -> dict:
    """A run's validation curve, cumulative training seconds and test figures."""
    records = [r for r in RunDir(run).metrics() if "valid" in r]
    results = RunDir(run).results()
    return {"valid_" + METRIC: [round(r["valid"][METRIC], 5) for r in records],
            "train_seconds": np.cumsum([r["train_seconds"] for r in records]).round(1).tolist(),
            "best_epoch": results["best_epoch"],
            "test": {k: round(results["test"][k], 5) for k in REPORTED},
            "valid": {k: round(results["valid"][k], 5) for k in REPORTED}}


def reach(run: dict, target: float) -> tuple[int | None, float | None]:
    """The first epoch (and training seconds to its end) whose validation metric reaches
    ``target``; None where it never does."""
    hits = [e for e, v in enumerate(run["valid_" + METRIC]) if v >= target]
    return (hits[0] + 1, run["train_seconds"][hits[0]]) if hits else (None, None)


def markdown(report: dict) -> str:
    cold, warm = report["runs"]["grown_cold"], report["runs"]["grown_warm"]
    best = max(cold["valid_" + METRIC])
    lines = ["# Warm start on a grown log", "", f"Command: `{report['command']}`", "",
             f"Machine: {machine_line(report['machine'])}.", "",
             report["setup"], "",
             f"## To reach the cold run's best validation {METRIC} ({best:.5f})", ""]
    rows = []
    for name in ("grown_cold", "grown_warm"):
        epoch, seconds = reach(report["runs"][name], best)
        rows.append([name, epoch or "never", f"{seconds:.0f}" if seconds else "–"])
    lines += table(["run", "epochs", "training seconds"], rows) + ["",
                   f"## Test at the epoch chosen on validation {METRIC}", ""]
    lines += table(["run", "best epoch", *REPORTED],
                   [[name, run["best_epoch"], *[f"{run['test'][k]:.5f}" for k in REPORTED]]
                    for name, run in report["runs"].items()]) + ["",
                   f"## Validation {METRIC} per epoch", ""]
    lines += table(["epoch", "grown_cold", "grown_warm"],
                   [[e + 1, f"{c:.5f}", f"{w:.5f}"] for e, (c, w) in enumerate(
                       zip(cold["valid_" + METRIC], warm["valid_" + METRIC]))])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/warm_start"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--users", type=int, default=15_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--t1", type=int, default=70, help="the old log's last day")
    parser.add_argument("--t2", type=int, default=100, help="the grown log's last day")
    parser.add_argument("--target-days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = prepare(args.work, args)
    runs = args.work / "runs"
    report = {"command": " ".join(["python -m experiments.benchmarks.warm_start", *sys.argv[1:]]),
              "machine": machine(), "runs": {},
              "setup": (f"Log: `drifting_log` with {args.users:,} users and {args.items:,} items "
                        f"over {args.t2} days (seed {args.seed}); old = days 0-{args.t1}, grown = "
                        f"days 0-{args.t2}; each split in time with its last {args.target_days} "
                        f"days for targets (valid: a user's first event after the cutoff, test: "
                        f"the next). Reference MQSA-TED config, {args.epochs} epochs, every "
                        f"user ranked each epoch. The warm run starts from the old run's best "
                        f"checkpoint. Training seconds include each run's own compilation "
                        f"(separate caches).")}
    plan = (("old", "old", None), ("grown_cold", "grown", None),
            ("grown_warm", "grown", runs / "old"))
    for name, dataset, init_from in plan:
        train(runs / name, dataset, data, args.epochs, init_from)
        report["runs"][name] = curve(runs / name)
        if name == "grown_warm":
            report["warm_start"] = json.loads(
                RunDir(runs / name).provenance_file.read_text())["init_from"]
        args.results.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.results / "warm_start.json", report)
        if "grown_warm" in report["runs"]:
            write_text_atomic(args.results / "warm_start.md", markdown(report))


if __name__ == "__main__":
    main()
