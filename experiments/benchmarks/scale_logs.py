"""The scale benchmark of real-sized logs: synthetic logs of 10^6, 10^7 (and 10^8) events
(:mod:`experiments.benchmarks.synthetic_log`), imported as CSV and as Parquet, then MQSA-TED
trained for a number of steps with the reference hyperparameters, and every user evaluated (or,
with ``--eval-users``, a fixed sample of them: ``final_eval=sample``).

    python -m experiments.benchmarks.scale_logs --events 1e6 1e7 --steps 200 \
        [--workdir /tmp/scale_logs]
    python -m experiments.benchmarks.scale_logs --events 1e8 --steps 50 --eval-users 100000
    python -m experiments.benchmarks.scale_logs --events 1e6 --steps 200 --processes 2

With ``--processes 2`` only the training is measured again, on two local processes of one CPU
device each (mesh data=2: each holds half the users, :mod:`mqsa_jax.hosts`), beside the log's
one-process figures (each process's own peak RSS; the seconds of the whole run);
``--train-only`` measures a log's one-process training again, its import figures kept;
``--import-only`` its imports, its training figures kept.

Per log: import seconds and peak RSS of each format, the prepared dataset's size on disk, the
training process's peak RSS, its seconds per 100 steps and targets/s between its first and last
progress lines (batch shapes first seen in that window still compile there: an upper bound),
all the steps' seconds (compilation included) and the final evaluation's seconds.  The logs and
runs stay in the work directory (never committed); results go to
``experiments/results/scale_logs.{json,md}``, one entry per log (with its own command),
replaced as each finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.benchmarks.multiprocess import local_process_envs
from experiments.benchmarks.synthetic_log import SIZES, write_log
from experiments.markdown import table
from experiments.measure import machine, machine_line
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.rundir import RunDir

RESULTS = Path(__file__).resolve().parents[1] / "results"
_PROGRESS = re.compile(r"batch (\d+)/\d+ .* ([\d,]+) targets/s")


def _run(command: list[str], env: dict, on_line=None) -> tuple[float, float, str]:
    """Runs ``command``; returns its seconds, its peak RSS in GB (its own, from wait4) and its
    stderr.  ``on_line(line, seconds)`` sees each stderr line as it comes."""
    seconds, peaks, stderr = _run_processes(command, [env], on_line)
    return seconds, peaks[0], stderr


def _run_processes(command: list[str], envs: list[dict],
                   on_line=None) -> tuple[float, list[float], str]:
    """Runs ``command`` once per environment (cooperating processes); returns the seconds until
    all ended, each one's peak RSS in GB and the first one's stderr (the others' go to files)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        others = [open(Path(logs) / f"{i}.err", "w+") for i in range(1, len(envs))]
        processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE if i == 0 else others[i - 1],
                                      text=True) for i, env in enumerate(envs)]
        lines = []
        for line in processes[0].stderr:
            lines.append(line)
            if on_line:
                on_line(line, time.perf_counter() - start)
        peaks = []
        for i, process in enumerate(processes):
            _, status, usage = os.wait4(process.pid, 0)
            peaks.append(usage.ru_maxrss / 2**20)
            if os.waitstatus_to_exitcode(status):
                if i:
                    others[i - 1].seek(0)
                text = others[i - 1].read() if i else "".join(lines)
                raise SystemExit(f"{' '.join(command)} (process {i}) failed:\n{text[-3000:]}")
    return time.perf_counter() - start, peaks, "".join(lines)


def _size_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30


def _name(events: int) -> str:
    return f"log{events:.0e}".replace("+", "").replace("e0", "e")


def measure(events: int, steps: int, workdir: Path, eval_users: int = 0) -> dict:
    entry = {"events": events, "users": SIZES[events][0], "items": SIZES[events][1],
             **measure_imports(events, workdir)}
    entry["train"] = measure_training(events, steps, workdir, eval_users)
    return entry


def measure_imports(events: int, workdir: Path) -> dict:
    """Imports the log as CSV and as Parquet (writing it first where it is missing); each
    import's figures, the prepared dataset's size and its counts after the 5-core filter."""
    cli = [sys.executable, "-m", "mqsa_jax"]
    env = dict(os.environ, MQSA_DATA_DIR=str(workdir / "data"))
    name = _name(events)
    entry = {}
    for fmt in ("csv", "parquet"):
        log = workdir / f"{name}.{fmt}"
        if not log.exists():
            write_log(log, events, parquet=fmt == "parquet")
        seconds, rss, _ = _run([*cli, "data", "import", str(log), "--format", fmt, "--name",
                                f"{name}_{fmt}", "--replace"], env)
        entry[f"import_{fmt}"] = {"seconds": round(seconds, 1), "peak_rss_gb": round(rss, 2),
                                  "file_gb": round(log.stat().st_size / 2**30, 3)}
    data = workdir / "data"
    entry["prepared_gb"] = round(_size_gb(data / "tfds" / "mqsa_sequences" / f"{name}_csv")
                                 + (data / "imported" / f"{name}_csv.npz").stat().st_size
                                 / 2**30, 3)
    info = json.loads(subprocess.run([*cli, "data", "info", f"{name}_csv"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    entry["after_5_core"] = {k: info[k] for k in ("num_users", "num_items", "num_interactions")}
    return entry


def measure_training(events: int, steps: int, workdir: Path, eval_users: int = 0,
                     processes: int = 1) -> dict:
    """Trains the imported log ``steps`` steps on ``processes`` local processes (mesh
    data=processes) and evaluates; its figures."""
    name = _name(events)
    envs = [dict(env, MQSA_DATA_DIR=str(workdir / "data"))
            for env in local_process_envs(processes, 1)]
    run = workdir / "runs" / f"{name}_{processes}"
    shutil.rmtree(run, ignore_errors=True)
    progress = []  # (seconds, batch, targets/s) of each progress line

    def on_line(line, seconds):
        found = _PROGRESS.search(line)
        if found:
            progress.append((seconds, int(found.group(1)), found.group(2)))

    sample = ["--set", f"eval_users={eval_users}", "--set", "final_eval=sample"]
    seconds, peaks, _ = _run_processes(
        [sys.executable, "-m", "mqsa_jax", "train", "--dataset", f"{name}_csv", "--run-dir",
         str(run), "--no-progress", "--set", f"max_steps={steps}", "--set",
         "log_every_seconds=20", "--mesh", f"data={processes}", *(sample if eval_users else [])],
        envs, on_line)
    record = RunDir(run).metrics()[-1]
    train = {"steps": steps, "processes": processes, "process_seconds": round(seconds, 1),
             "peak_rss_gb": round(max(peaks), 2),
             "train_seconds_compile_included": record["train_seconds"],
             "eval_seconds": record["eval_seconds"], "eval_users": eval_users or "all",
             "valid": record["valid"]}
    if len(progress) >= 2:  # steady: between the first and the last progress line
        (t0, b0, _), (t1, b1, rate) = progress[0], progress[-1]
        train["steady_seconds_per_100_steps"] = round(100 * (t1 - t0) / (b1 - b0), 1)
        train["targets_per_second"] = int(rate.replace(",", ""))
    return train


def write(results: dict) -> None:
    write_json_atomic(RESULTS / "scale_logs.json", results)
    rows = []
    for entry in results["logs"]:
        for key in sorted(k for k in entry if k.startswith("train")):
            train, first = entry[key], key == "train"
            rows.append([
                f"{entry['events']:.0e}", str(train.get("processes", 1)),
                f"{entry['after_5_core']['num_users']:,} / {entry['after_5_core']['num_items']:,}",
                *([f"{entry[f'import_{fmt}']['seconds']} s, "
                   f"{entry[f'import_{fmt}']['peak_rss_gb']} GB" for fmt in ("csv", "parquet")]
                  if first else ["–", "–"]),
                f"{entry['prepared_gb']} GB" if first else "–", f"{train['peak_rss_gb']} GB",
                f"{train['steady_seconds_per_100_steps']} s"
                if "steady_seconds_per_100_steps" in train else "–",
                f"{train['targets_per_second']:,}" if "targets_per_second" in train else "–",
                f"{train['eval_seconds']} s ({train['eval_users']:,} users)"
                if train["eval_users"] != "all" else f"{train['eval_seconds']} s (all users)",
                train.get("command", entry["command"])
                + (f"; imports: {entry['import_command']}"
                   if first and "import_command" in entry else "")])
    lines = ["# Real-sized logs: import, train, evaluate", "",
             f"Machine: {machine_line(results['machine'])}.",
             "", *table(["events", "processes", "users / items after the 5-core", "import CSV",
                         "import Parquet", "prepared on disk", "training peak RSS (a process)",
                         "per 100 steps (upper bound)", "targets/s", "final evaluation",
                         "command"], rows), "",
             *[line for note in results.get("notes", []) for line in (note, "")],
             "MQSA-TED with the reference hyperparameters.  Import: the whole `mqsa-jax data "
             "import` command (seconds and its peak RSS).  Per 100 steps: between the first and "
             "last progress lines of the training log; new batch shapes still compile in that "
             "window, so it is an upper bound.  Two processes: one CPU device each, mesh data=2, "
             "each holding half the users; the seconds are the whole run's."]
    write_text_atomic(RESULTS / "scale_logs.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-users", type=int, default=0, help="rank a sample (0: all)")
    parser.add_argument("--processes", type=int, default=1,
                        help="train on this many local processes (above 1: only the training)")
    parser.add_argument("--train-only", action="store_true",
                        help="measure only the training again, on the log already imported")
    parser.add_argument("--import-only", action="store_true",
                        help="measure only the imports again, the training figures kept")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale_logs"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scale_logs.json"
    results = json.loads(path.read_text()) if path.exists() else {"logs": []}
    results["machine"] = machine()
    command = "python -m experiments.benchmarks.scale_logs " + " ".join(sys.argv[1:])
    for events in map(int, args.events):
        if args.import_only:
            entry = next(e for e in results["logs"] if e["events"] == events)
            entry.update(measure_imports(events, args.workdir), import_command=f"`{command}`")
        elif args.processes > 1 or args.train_only:
            entry = next(e for e in results["logs"] if e["events"] == events)
            key = "train" if args.processes == 1 else f"train_{args.processes}_processes"
            entry[key] = {
                **measure_training(events, args.steps, args.workdir, args.eval_users,
                                   args.processes), "command": f"`{command}`"}
        else:
            entry = {**measure(events, args.steps, args.workdir, args.eval_users),
                     "command": f"`{command}`"}
        results["logs"] = sorted([e for e in results["logs"] if e["events"] != events]
                                 + [entry], key=lambda e: e["events"])
        write(results)
        print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    main()
