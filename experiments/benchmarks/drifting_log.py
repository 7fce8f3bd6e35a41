"""A synthetic timestamped log whose catalogue and popularity drift, for warm-start experiments.

Items arrive one after another over ``days`` (a stock of ``initial_items`` is there from the
start), so new items keep appearing and old ones fade.  A user starts at a uniform time and has
``5 + Geometric(mean 10)`` events, about a day apart.  Each event is, with probability
``follow``, one of the 1-3 items that arrived after the user's previous item (a sequential
signal, the transitions TED distils), else a draw from what is popular at that moment: the
``lag``-th most recent item, ``lag`` heavy-tailed (so popularity drifts with the arrivals).
Events after the last day are dropped.  Written as CSV ``user_id,item_id,timestamp`` (Unix
seconds from 2020-01-01), deterministic for a seed, never committed.

    python -m experiments.benchmarks.drifting_log OUT.csv [--users 20000] [--items 6000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from mqsa_jax.io import atomic_output

DAY = 86_400
EPOCH_START = 1_577_836_800  # 2020-01-01T00:00:00Z


def drifting_events(users: int, items: int, days: int = 100, initial_items: int = 1000,
                    follow: float = 0.6, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(user, item, time) columns of the log, in user order; times in seconds."""
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1 / 10, users) - 1
    start = rng.uniform(0, days * DAY, users)
    user = np.repeat(np.arange(users), lengths)
    first = np.cumsum(lengths) - lengths
    gaps = rng.exponential(DAY, len(user))
    gaps[first] = 0
    running = np.cumsum(gaps)
    time = np.repeat(start - running[first], lengths) + running
    # Items arrived by time t: the stock, then one every ``days * DAY / (items - stock)`` s.
    arrived = np.minimum(items, initial_items + (time / (days * DAY)
                                                 * (items - initial_items)).astype(np.int64))
    lag = np.minimum((rng.pareto(1.2, len(user)) * 20).astype(np.int64), arrived - 1)
    popular = arrived - 1 - lag
    follows = rng.random(len(user)) < follow
    steps = rng.integers(1, 4, len(user))
    item = popular.copy()
    # Position by position over every user at once: a user's item follows its previous one.
    position = np.arange(len(user)) - np.repeat(first, lengths)
    for k in range(1, int(lengths.max())):
        at = np.flatnonzero((position == k) & follows)
        item[at] = np.minimum(item[at - 1] + steps[at], arrived[at] - 1)
    keep = time < days * DAY
    return user[keep], item[keep], (EPOCH_START + time[keep]).astype(np.int64)


def write_csv(path: Path, user: np.ndarray, item: np.ndarray, time: np.ndarray) -> None:
    """The columns as ``u123,i456,time`` lines, written atomically."""
    table = pa.table({
        "user_id": pc.binary_join_element_wise("u", pc.cast(pa.array(user), pa.string()), ""),
        "item_id": pc.binary_join_element_wise("i", pc.cast(pa.array(item), pa.string()), ""),
        "timestamp": pa.array(time)})
    with atomic_output(path) as f:
        pa_csv.write_csv(table, f, pa_csv.WriteOptions(quoting_style="none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=6_000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    columns = drifting_events(args.users, args.items, args.days, seed=args.seed)
    write_csv(args.out, *columns)
    print(f"{len(columns[0]):,} events written to {args.out}")


if __name__ == "__main__":
    main()
