"""Runs the planned runs as ``mqsa-jax train`` processes, resuming each: one after another, or
in several workers that share the machine's cores (:func:`core_share`, :func:`on_cores`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from experiments.measure import machine
from experiments.reproduction.plan import Run
from experiments.reproduction.summary import run_status
from mqsa_jax.checkpoint import has_checkpoint
from mqsa_jax.io import write_json_atomic
from mqsa_jax.rundir import RunDir


def core_share(worker: int, workers: int) -> list[int]:
    """The cores of worker ``worker`` of ``workers`` that share this process's cores: on a 2-core
    CPU machine, two single-core yelp runs at once train about 10% more epochs an hour than one
    run on both cores (``experiments/results/core_workers.md``)."""
    return sorted(os.sched_getaffinity(0))[worker::workers]


def worker_count(text: str) -> int:
    """``--workers``: from 1 to this process's cores (an argparse type: a bad value is one line
    and exit 2)."""
    cores = len(os.sched_getaffinity(0))
    if not (text.isdigit() and 1 <= int(text) <= cores):
        raise argparse.ArgumentTypeError(f"{text}: expected 1 to this machine's {cores} cores")
    return int(text)


def on_cores(command: list[str], cores: list[int]) -> tuple[list[str], dict]:
    """``command`` made to run on ``cores`` alone, XLA's intra-op threads off where that is one
    core, and the ``subprocess.Popen`` arguments it needs; unchanged on all the cores."""
    if set(cores) == os.sched_getaffinity(0):
        return command, {}
    env = dict(os.environ)
    if len(cores) == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    return ([sys.executable, "-m", "experiments.reproduction.pinned",
             ",".join(map(str, cores)), *command], {"env": env})


def start_on_cores(command: list[str], cores: list[int], **popen) -> subprocess.Popen:
    """``command`` started on ``cores`` alone (:func:`on_cores`), such as a worker's share
    (:func:`core_share`); ``popen``: further ``subprocess.Popen`` arguments."""
    pinned, pinning = on_cores(command, cores)
    return subprocess.Popen(pinned, **pinning, **popen)


def stop(processes: list[subprocess.Popen]) -> list[int]:
    """Terminates those of ``processes`` still running (a run or trial stopped so leaves nothing
    half-written and resumes) and waits for all; returns their exit codes."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    return [process.wait() for process in processes]


def interrupt_on_sigterm() -> None:
    """``kill`` stops this process as Ctrl-C does: with KeyboardInterrupt, which stops its
    runs."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def record_start(run: Run, command: list[str], cores: int) -> None:
    """Appends this (re)start's machine, load and ``cores`` (how many it may use) to the run's
    provenance file."""
    path = RunDir(run.run_dir).provenance_file
    # Without a checkpoint the run starts again from epoch 1: the earlier sessions' epochs (and
    # so their machines) are no longer in its metrics.
    resumes = path.exists() and has_checkpoint(run.run_dir)
    record = json.loads(path.read_text()) if resumes else {"sessions": []}
    record["command"] = shlex.join(command[:-2] + ["--run-dir", command[-1]])
    # Wall times are only comparable on an unshared machine: say how busy it was at each start.
    record["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **machine(),
                               "load_average_1min": round(os.getloadavg()[0], 2),
                               "nice": os.nice(0), "cores": cores})
    write_json_atomic(path, record)  # creates the run directory


def execute(runs: list[Run], extra: dict, after_each: Callable[[], None], workers: int = 1
            ) -> int:
    """Runs (or resumes) each unfinished run, in ``workers`` processes at once that share the
    cores (:func:`core_share`), each taking the next run when its own ends, and calls
    ``after_each`` after each run; returns the number that failed.  Ctrl-C or SIGTERM, of this
    process or of a run, raises KeyboardInterrupt once the runs going on have stopped."""
    queue, lock = deque(enumerate(runs, 1)), threading.Lock()
    children: list[subprocess.Popen] = []
    outcome = {"failed": 0, "interrupted": False}

    def work(worker: int) -> None:
        cores = core_share(worker, workers)
        while True:
            with lock:  # config files load into the interpreter: one at a time
                if not queue or outcome["interrupted"]:
                    return
                i, run = queue.popleft()
                status = run_status(run.run_dir)
                # Finished, for the epochs asked now (a run stopped early resumes and stops at
                # once).
                if status["complete"] and status["epochs_done"] >= run.config(extra).train.epochs:
                    print(f"[{i}/{len(runs)}] done already: {run.run_dir}", flush=True)
                    continue
                command = run.command(extra)
                print(f"[{i}/{len(runs)}] {shlex.join(command)}", flush=True)
                record_start(run, command, len(cores))
                child = start_on_cores([sys.executable, "-m", "mqsa_jax.cli", *command[1:]],
                                       cores)
                children.append(child)
            code = child.wait()
            with lock:
                if code == 130 or code < 0:
                    outcome["interrupted"] = True
                    return
                if code:
                    outcome["failed"] += 1
                    print(f"[{i}/{len(runs)}] failed (exit {code}): {run.run_dir}", flush=True)
                after_each()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        outcome["interrupted"] = True
    if outcome["interrupted"]:
        stop(children)
        raise KeyboardInterrupt
    return outcome["failed"]
