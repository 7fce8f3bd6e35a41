"""Runs the planned runs one after another as ``mqsa-jax train`` processes, resuming each."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable

from experiments.measure import machine
from experiments.reproduction.plan import Run
from experiments.reproduction.summary import run_status
from mqsa_jax.checkpoint import has_checkpoint
from mqsa_jax.io import write_json_atomic
from mqsa_jax.rundir import RunDir


def record_start(run: Run, command: list[str]) -> None:
    """Appends this (re)start's machine and load to the run's provenance file."""
    path = RunDir(run.run_dir).provenance_file
    # Without a checkpoint the run starts again from epoch 1: the earlier sessions' epochs (and
    # so their machines) are no longer in its metrics.
    resumes = path.exists() and has_checkpoint(run.run_dir)
    record = json.loads(path.read_text()) if resumes else {"sessions": []}
    record["command"] = shlex.join(command[:-2] + ["--run-dir", command[-1]])
    # Wall times are only comparable on an unshared machine: say how busy it was at each start.
    record["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **machine(),
                               "load_average_1min": round(os.getloadavg()[0], 2),
                               "nice": os.nice(0)})
    write_json_atomic(path, record)  # creates the run directory


def execute(runs: list[Run], extra: dict, after_each: Callable[[], None]) -> int:
    """Runs (or resumes) each unfinished run in turn, calling ``after_each`` after each one;
    returns the number that failed.  Ctrl-C or SIGTERM of a run raises KeyboardInterrupt."""
    failed = 0
    for i, run in enumerate(runs, 1):
        status = run_status(run.run_dir)
        # Finished, for the epochs asked now (a run stopped early resumes and stops at once).
        if status["complete"] and status["epochs_done"] >= run.config(extra).train.epochs:
            print(f"[{i}/{len(runs)}] done already: {run.run_dir}", flush=True)
            continue
        command = run.command(extra)
        print(f"[{i}/{len(runs)}] {shlex.join(command)}", flush=True)
        record_start(run, command)
        code = subprocess.call([sys.executable, "-m", "mqsa_jax.cli", *command[1:]])
        if code == 130 or code < 0:
            raise KeyboardInterrupt
        if code:
            failed += 1
            print(f"[{i}/{len(runs)}] failed (exit {code}): {run.run_dir}", flush=True)
        after_each()
    return failed
