"""Throughput of batch recommendations: ``mqsa-jax recommend RUN --input FILE --output FILE``.

    python -m experiments.benchmarks.recommend_throughput RUN_DIR [--histories 10000] [--k 10]
        [--batch-sizes 256 1024] [--out experiments/results/recommend_throughput]

The input is ``--histories`` histories drawn from the run's dataset (each a random user's
history cut at a random length, in source ids), written as JSON lines.  The command runs as a
user runs it, in its own process: the figures are its wall time (restore and compilation
included) and the streaming part it reports itself, one command per ``--batch-sizes`` value
(histories per device call), all on the same input in the same sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.markdown import table
from experiments.measure import machine_line
from mqsa_jax.config import read_run_config
from mqsa_jax.data import registry
from mqsa_jax.data.dataset import full_sequences
from mqsa_jax.io import write_json_atomic, write_text_atomic


def write_histories(run_dir: Path, count: int, path: Path, seed: int = 0) -> None:
    dataset = registry.load_dataset(read_run_config(run_dir).dataset)
    items, offsets = full_sequences(dataset)
    rng = np.random.default_rng(seed)
    users = rng.integers(0, dataset.num_users, count)
    with open(path, "w") as f:
        for n, user in enumerate(users):
            history = items[offsets[user]:offsets[user + 1]]
            cut = rng.integers(1, len(history) + 1)
            f.write(json.dumps({"id": n, "history": dataset.item_ids[history[:cut]].tolist()})
                    + "\n")


def _run(command: list[str]) -> tuple[str, float]:
    """A command's stdout and wall seconds, run as a user runs it, the compilation cache off."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"})
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr)
    return done.stdout, round(wall, 2)


def _time_command(run_dir: Path, source: Path, target: Path, k: int, batch_size: int) -> dict:
    """One ``mqsa-jax recommend --input`` command's wall time and its own streaming figures."""
    stdout, wall = _run([sys.executable, "-m", "mqsa_jax", "recommend", str(run_dir), "--input",
                         str(source), "--output", str(target), "--k", str(k),
                         "--batch-size", str(batch_size)])
    summary = json.loads(stdout)
    written = sum(1 for _ in open(target))
    return {"batch_size": batch_size, "written": written, "command_wall_seconds": wall,
            "streaming_seconds": summary["seconds"],
            "histories_per_second": summary["per_second"],
            "compiled_shapes": summary["compiled_shapes"],
            "histories_per_second_with_restore_and_compile": round(written / wall, 1)}


def _time_one_history(run_dir: Path, source: Path, k: int) -> float:
    """Wall seconds of ``mqsa-jax recommend RUN --history ...`` on the first input line."""
    history = json.loads(source.open().readline())["history"]
    return _run([sys.executable, "-m", "mqsa_jax", "recommend", str(run_dir), "--history",
                 ",".join(history), "--k", str(k)])[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--histories", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path,
                        default=Path("experiments/results/recommend_throughput"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024],
                        help="histories per device call, one command each (default 1024)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "histories.jsonl", Path(tmp) / "recs.jsonl"
        write_histories(args.run_dir, args.histories, source)
        rows = [_time_command(args.run_dir, source, target, args.k, batch)
                for batch in args.batch_sizes]
        one_history = _time_one_history(args.run_dir, source, args.k)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_line(),
        "command": "python -m experiments.benchmarks.recommend_throughput "
                   + " ".join(sys.argv[1:]),
        "run_dir": str(args.run_dir), "histories": args.histories, "k": args.k, "rows": rows,
        "one_history_command_wall_seconds": one_history,
    }
    write_json_atomic(args.out.with_suffix(".json"), report)
    lines = [f"# Batch recommendations ({report['date']}; {report['machine']})", "",
             f"Command: `{report['command']}`: `mqsa-jax recommend RUN --input FILE --output "
             f"FILE --k {args.k} --batch-size B` on {args.histories:,} histories drawn from the "
             "run's dataset, in its own process, the compilation cache off.", "",
             *table(["batch size", "histories", "command wall s (restore + compile + stream)",
                     "streaming s", "histories/s streaming", "histories/s overall",
                     "shapes compiled"],
                    [[row["batch_size"], f"{row['written']:,}", row["command_wall_seconds"],
                      row["streaming_seconds"], row["histories_per_second"],
                      row["histories_per_second_with_restore_and_compile"],
                      row["compiled_shapes"]] for row in rows]),
             "", f"One recommendation, `mqsa-jax recommend RUN --history ... --k {args.k}` "
             f"(the first input line's history): {one_history} s, restore and compilation "
             "included."]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
