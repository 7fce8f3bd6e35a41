"""A synthetic interaction log of realistic shape, generated deterministically (never committed).

Users have ``5 + Geometric(mean 10)`` events each; items are drawn with probability proportional
to ``rank^-1.05``; timestamps increase within a user.  Ids are written as ``u123`` and ``i456``
under the header ``user_id,item_id,timestamp``, as CSV or Parquet.  The sizes of the scale
benchmark (:data:`SIZES`): 10^6, 10^7 and 10^8 events.

    python -m experiments.benchmarks.synthetic_log 1e7 /tmp/log10m.csv [--parquet]

Memory: the columns of one chunk of users at a time (:data:`USERS_PER_CHUNK`), whatever the size.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

# events -> (users, items): about 14 events a user before the 5-core filter.
SIZES = {10**6: (70_000, 30_000), 10**7: (700_000, 300_000), 10**8: (7_000_000, 1_000_000)}
ZIPF_EXPONENT = 1.05
USERS_PER_CHUNK = 500_000
_PLAIN = pa_csv.WriteOptions(quoting_style="none")


def _chunk(rng: np.random.Generator, first_user: int, users: int,
           cumulative: np.ndarray) -> pa.Table:
    lengths = 5 + rng.geometric(1 / 10, users) - 1  # Geometric(mean 10) counts from 1
    user = np.repeat(np.arange(first_user, first_user + users), lengths)
    item = np.searchsorted(cumulative, rng.random(len(user)) * cumulative[-1], side="right")
    start = rng.integers(1_500_000_000, 1_600_000_000, users)
    gaps = rng.integers(1, 100_000, len(user))
    running = np.cumsum(gaps)
    first = np.cumsum(lengths) - lengths  # each user's first event
    within = running - np.repeat(running[first] - gaps[first], lengths)
    return pa.table({
        "user_id": pc.binary_join_element_wise("u", pc.cast(pa.array(user), pa.string()), ""),
        "item_id": pc.binary_join_element_wise("i", pc.cast(pa.array(item), pa.string()), ""),
        "timestamp": pa.array(np.repeat(start, lengths) + within),
    })


def write_log(path: Path, events: int, parquet: bool = False, seed: int = 0) -> int:
    """Writes the log of ``events`` (a key of :data:`SIZES`) to ``path``; returns its events."""
    users, items = SIZES[events]
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(np.arange(1, items + 1, dtype=np.float64) ** -ZIPF_EXPONENT)
    partial = path.with_name(path.name + ".partial")
    written = 0
    writer = None
    try:
        for first in range(0, users, USERS_PER_CHUNK):
            table = _chunk(rng, first, min(USERS_PER_CHUNK, users - first), cumulative)
            written += len(table)
            if writer is None:
                writer = (pq.ParquetWriter(partial, table.schema) if parquet
                          else pa_csv.CSVWriter(partial, table.schema,
                                                write_options=_PLAIN))
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.replace(partial, path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=float, help="1e6, 1e7 or 1e8")
    parser.add_argument("path", type=Path)
    parser.add_argument("--parquet", action="store_true")
    args = parser.parse_args()
    print(write_log(args.path, int(args.events), args.parquet), "events written to", args.path)


if __name__ == "__main__":
    main()
