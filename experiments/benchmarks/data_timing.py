"""Times the data layer: built-in dataset -> training arrays, and importing a 300,000-line log.

    python -m experiments.benchmarks.data_timing [--out experiments/results/data_timing.json]

Each figure is the wall time of a fresh `mqsa-jax` process (interpreter start included), so it
is what a user waits for.  The built-in figures are measured twice: with an empty data directory
(TFDS preparation from the committed files included) and with the TFDS dataset already prepared.
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

from experiments.measure import machine_line
from mqsa_jax.io import write_json_atomic

PREPARE = (
    "import sys; from mqsa_jax.data import registry; from mqsa_jax.data.arrays import "
    "build_sequence_data; build_sequence_data(registry.load_dataset(sys.argv[1]))"
)


def _timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 2)


def write_synthetic_log(path: Path, lines: int, seed: int = 0) -> None:
    """A CSV with string ids, float timestamps and Zipf-distributed item popularity."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, lines // 10, lines)
    items = rng.zipf(1.3, lines) % (lines // 20)
    times = rng.uniform(1e9, 1.7e9, lines).round(1)
    with open(path, "w") as f:
        f.write("user_id,item_id,timestamp\n")
        f.writelines(f"U{u},sku{i},{t}\n" for u, i, t in zip(users, items, times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/results/data_timing.json")
    args = parser.parse_args()
    results = {"machine": machine_line(), "prepare_to_training_arrays_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MQSA_DATA_DIR=str(Path(tmp) / "data"))
        for name in ("beauty", "sports", "toys", "yelp"):
            cold = _timed([sys.executable, "-c", PREPARE, name], env)
            warm = _timed([sys.executable, "-c", PREPARE, name], env)
            results["prepare_to_training_arrays_s"][name] = {"empty_data_dir": cold,
                                                             "prepared": warm}
        log = Path(tmp) / "log.csv"
        write_synthetic_log(log, 300_000)
        results["import_300k_line_csv_s"] = _timed(
            [sys.executable, "-m", "mqsa_jax", "data", "import", str(log), "--format", "csv",
             "--name", "synthetic"], env)
    write_json_atomic(Path(args.out), results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
