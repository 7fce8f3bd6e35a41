"""Reading an interaction log from a Parquet file, in batches of 2^20 rows (the text formats
are in :mod:`mqsa_jax.data.importers`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mqsa_jax.data.events import DEFAULT_COLUMNS, Columns, EventLog, arrow_log
from mqsa_jax.errors import UserError


def read_parquet(path: Path, columns: Columns = DEFAULT_COLUMNS) -> EventLog:
    """A Parquet file with user, item and time columns (ids of any type, read as text).

    Read in batches of 2^20 rows, string ids straight into dictionaries (Parquet stores them
    so); a file that breaks a rule is read again whole to name the row at fault.
    """
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise UserError(f"{path}: cannot read (No such file or directory)") from None
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    wanted = [columns.user, columns.item, columns.time]
    for column in wanted:
        if column not in schema.names:
            raise UserError(f"{path}: no column {column!r} (found: {', '.join(schema.names)})")
    as_text = [c for c in wanted[:2] if pa.types.is_string(schema.field(c).type)]

    def batches():
        for batch in pq.ParquetFile(path, read_dictionary=as_text).iter_batches(
                batch_size=1 << 20, columns=wanted):
            users, items = (ids if c in as_text else pc.cast(ids, pa.string())
                            for c, ids in zip(wanted[:2], batch.columns))
            yield users, items, pc.cast(batch.column(2), pa.float64()).to_numpy()

    try:
        log = arrow_log(path, batches())
    except (pa.ArrowException, OSError):
        log = None
    return log if log is not None else _parquet_error(path, wanted)


def _parquet_error(path: Path, wanted: list[str]) -> EventLog:
    """Raises the one-line error naming what is wrong with the Parquet file ``path``."""
    try:
        table = pq.read_table(path, columns=wanted)
        users, items = (pc.cast(table[c], pa.string()) for c in wanted[:2])
        times = pc.cast(table[wanted[2]], pa.float64()).to_numpy()
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable columns ({e})") from None
    if not len(times):
        raise UserError(f"{path}: no events")
    for kind, ids in (("user", users), ("item", items)):
        empty = pc.or_kleene(pc.is_null(ids), pc.equal(pc.utf8_length(
            pc.utf8_trim_whitespace(ids)), 0)).to_numpy(zero_copy_only=False)
        if empty.any():
            raise UserError(f"{path}: row {np.argmax(empty) + 1}: empty {kind} id")
    bad = ~np.isfinite(times)
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"{path}: row {row + 1}: timestamp {table[wanted[2]][row].as_py()!r} "
                        f"is not a finite number")
    raise UserError(f"{path}: an id holds a NUL byte")
