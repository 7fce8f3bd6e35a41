"""One ranking step over a large catalogue (the two-scan path of
:func:`mqsa_jax.evaluation.label_ranks`), checkouts compared in one process.

    python -m experiments.benchmarks.ranking_scan CHECKOUT [CHECKOUT ...] [--items 131963 870509]
        [--rounds 8] [--out experiments/results/ranking_scan]

Imports ``mqsa_jax`` from each CHECKOUT in turn (as ``step_time`` does), jits ``label_ranks``
for 256 random users (d = 64, 51 history items each) against a random table of each size, checks
that every checkout gives the same ranks, then times them in alternation (the order flipped each
round): median milliseconds per step, compilation excluded.  Alone on the machine.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments.benchmarks.step_time import _timed, import_from
from experiments.markdown import table
from experiments.measure import machine_line

USERS, WIDTH, HISTORY = 256, 64, 51


def _commit(checkout: str) -> str:
    """The checkout's commit, with ``+`` where its ``mqsa_jax`` has changes."""
    git = ["git", "-C", checkout]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--",
                            "mqsa_jax"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+" if dirty else "")


def _label_ranks(checkout: str):
    return import_from(checkout, "evaluation")[0].label_ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--items", type=int, nargs="+", default=[131963, 870509])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", default="experiments/results/ranking_scan")
    args = parser.parse_args()
    from mqsa_jax.io import write_text_atomic

    functions = {checkout: _label_ranks(checkout) for checkout in args.checkouts}
    rng = np.random.default_rng(0)
    rows = []
    for items in args.items:
        inputs = (rng.normal(size=(USERS, WIDTH)).astype(np.float32),
                  rng.normal(size=(items, WIDTH)).astype(np.float32),
                  rng.integers(0, items, USERS).astype(np.int32),
                  rng.integers(0, items, (USERS, HISTORY)).astype(np.int32))
        inputs = tuple(map(jax.device_put, inputs))
        steps = {checkout: jax.jit(lambda s, t, y, h, f=f, n=items: f(s, t, y, h, n))
                 for checkout, f in functions.items()}
        ranks = {checkout: np.asarray(step(*inputs)) for checkout, step in steps.items()}
        first = next(iter(ranks.values()))
        assert all((r == first).all() for r in ranks.values()), "the checkouts' ranks differ"
        seconds = {checkout: [] for checkout in steps}
        for round_ in range(args.rounds):
            for checkout in args.checkouts[::-1] if round_ % 2 else args.checkouts:
                seconds[checkout].append(_timed(functools.partial(steps[checkout], *inputs)))
        rows += [[items, f"{checkout} ({_commit(checkout)})",
                  round(float(np.median(s)) * 1e3, 1)] for checkout, s in seconds.items()]
    lines = [f"# Ranking scan ({time.strftime('%Y-%m-%d %H:%M')}; {machine_line()})", "",
             "Command: `python -m experiments.benchmarks.ranking_scan "
             + " ".join(sys.argv[1:]) + "`, alone.  The same ranks from every checkout.", "",
             *table(["items", "checkout", "ms per step (median)"], rows)]
    write_text_atomic(Path(f"{args.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
