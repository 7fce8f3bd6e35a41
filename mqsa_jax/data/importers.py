"""Reading a user's interaction log: the csv (and tsv), sasrec, recbole and parquet
(:mod:`mqsa_jax.data.parquet`) formats, and sasrec export.

Readers return an :class:`EventLog`: columns, each event's user and item as a code into the
distinct ids (kept as the strings of the file); :func:`mqsa_jax.data.from_log.build_dataset`
makes the dataset from it.

Files are parsed by Apache Arrow (``pyarrow``): native, multi-threaded parsing and hash-based
dictionary encoding, so no Python object is made per event (a 10^7-event CSV in seconds, where
the csv module took a minute and 3 GB).  Arrow also reads Parquet, and TFDS already brings it.
A text file Arrow refuses, or whose columns break a rule (an empty id, a NUL byte, a time that is
not a finite number), is read again by the exact reader below, line by line, which either reads
it the same way or names the line at fault in one error: bad input costs time, never a message.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from mqsa_jax.data.dataset import Dataset, full_sequences
from mqsa_jax.data.events import (
    DEFAULT_COLUMNS,
    DEFAULT_ENCODING,
    ID_TYPE,
    Columns,
    EventLog,
    arrow_log,
    arrow_or_none,
    open_text,
    stream_csv,
)
from mqsa_jax.data.parquet import read_parquet
from mqsa_jax.errors import UserError
from mqsa_jax.io import write_text_atomic

FORMATS = ("csv", "sasrec", "recbole", "parquet")


def _check_no_nul(path: Path, line: int, *fields: str) -> None:
    if any("\0" in field for field in fields):
        raise UserError(f"{path}:{line}: NUL byte in the text (a binary file?)")


def _parse_times(path: Path, values: list[str], lines: list[int]) -> np.ndarray:
    try:
        times = np.array(values, dtype=np.float64)
        bad = ~np.isfinite(times)
    except ValueError:
        bad = None
    if bad is None or bad.any():
        for value, line in zip(values, lines):
            try:
                ok = np.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"{path}:{line}: timestamp {value!r} is not a finite number")
    return times


def _check_ids(path: Path, users: list[str], items: list[str], lines: list[int]) -> None:
    for kind, ids in (("user", users), ("item", items)):
        empty = np.flatnonzero(np.char.str_len(np.asarray(ids, dtype=str)) == 0)
        if len(empty):
            raise UserError(f"{path}:{lines[empty[0]]}: empty {kind} id")


def _read_table(path: Path, delimiter: str, header_columns, columns: Columns, need_time: bool,
                encoding: str):
    """Reads a delimited file with a header; ``header_columns`` maps header fields to names."""
    log = _arrow_table(path, delimiter, header_columns, columns, encoding)
    if log is not None:
        return log
    with open_text(path, encoding) as f:
        rows = csv.reader(f, delimiter=delimiter)
        try:
            return _parse_table(path, rows, header_columns, columns, need_time)
        except csv.Error as e:  # a NUL byte, a field past the csv module's size limit
            raise UserError(f"{path}:{rows.line_num}: unreadable line ({e})") from None


def _parse_table(path: Path, rows, header_columns, columns: Columns,
                 need_time: bool) -> EventLog:
    header = next((r for r in rows if r), None)
    if header is None:
        raise UserError(f"{path}: empty file, expected a header line naming the columns")
    names = header_columns(path, header)
    wanted = [columns.user, columns.item] + ([columns.time] if need_time else [])
    for column in wanted:
        if column not in names:
            raise UserError(
                f"{path}:{rows.line_num}: no column {column!r} in the header "
                f"(found: {', '.join(names)})"
            )
    u, i = names.index(columns.user), names.index(columns.item)
    t = names.index(columns.time) if columns.time in names else None
    width = len(names)
    users, items, times, lines = [], [], [], []
    for row in rows:
        if not row:
            continue
        if len(row) != width:
            raise UserError(f"{path}:{rows.line_num}: expected {width} fields, found {len(row)}")
        _check_no_nul(path, rows.line_num, row[u], row[i])
        users.append(row[u].strip())
        items.append(row[i].strip())
        if t is not None:
            times.append(row[t].strip())
        lines.append(rows.line_num)
    if not lines:
        raise UserError(f"{path}: no events after the header line")
    _check_ids(path, users, items, lines)
    # Without a time column the file order is the time order.
    event_times = (_parse_times(path, times, lines) if t is not None
                   else np.arange(len(lines), dtype=np.float64))
    return EventLog.from_strings(str(path), np.asarray(users, dtype=str),
                                 np.asarray(items, dtype=str), event_times)


def _arrow_table(path: Path, delimiter: str, header_columns, columns: Columns,
                 encoding: str) -> EventLog | None:
    """The file read by Arrow, or None where the exact reader must read it (or say what is
    wrong with it): Arrow refused it, or the header or a column breaks a rule."""
    try:
        with open_text(path, encoding) as f:
            header = next((row for row in csv.reader(f, delimiter=delimiter) if row), None)
    except (UserError, csv.Error):
        return None
    if header is None or len(set(header)) != len(header):
        return None
    raw = dict(zip(header_columns(path, header), header))  # name -> the header's own field
    if columns.user not in raw or columns.item not in raw:
        return None
    types = {raw[columns.user]: ID_TYPE, raw[columns.item]: ID_TYPE}
    if columns.time in raw:
        types[raw[columns.time]] = pa.float64()
    user, item, time = raw[columns.user], raw[columns.item], raw.get(columns.time)

    def batches():
        for batch in stream_csv(path, encoding, pa_csv.ParseOptions(delimiter=delimiter), types):
            times = None if time is None else batch.column(time).to_numpy()  # missing: NaN
            yield batch.column(user), batch.column(item), times

    return arrow_or_none(lambda: arrow_log(path, batches()))


def read_csv(path: Path, columns: Columns = DEFAULT_COLUMNS, delimiter: str | None = None,
             encoding: str = DEFAULT_ENCODING) -> EventLog:
    """CSV/TSV with a header; the delimiter defaults to a tab for .tsv/.tab files, else a comma."""
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return _read_table(path, delimiter, lambda _p, header: [h.strip() for h in header],
                       columns, need_time=True, encoding=encoding)


def _recbole_header(path: Path, header: list[str]) -> list[str]:
    names = []
    for field in header:
        name, sep, kind = field.strip().partition(":")
        if not sep or not name or not kind:
            raise UserError(
                f"{path}:1: header field {field!r} is not of the form name:type (RecBole .inter)"
            )
        names.append(name)
    return names


def read_recbole(path: Path, columns: Columns = DEFAULT_COLUMNS,
                 encoding: str = DEFAULT_ENCODING) -> EventLog:
    """RecBole atomic ``.inter`` file: tab-separated, ``name:type`` header fields.

    The time column is optional there; without it the file order is taken as the time order.
    """
    return _read_table(path, "\t", _recbole_header, columns, need_time=False, encoding=encoding)


def read_sasrec(path: Path, encoding: str = DEFAULT_ENCODING) -> EventLog:
    """SASRec-style text: one ``user item`` pair a line, already in time order."""
    log = _arrow_sasrec(path, encoding)
    if log is not None:
        return log
    users, items, lines = [], [], []
    with open_text(path, encoding) as f:
        for line_number, line in enumerate(f, 1):
            _check_no_nul(path, line_number, line)
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise UserError(
                    f"{path}:{line_number}: expected 2 fields 'user item', found {len(fields)}"
                )
            users.append(fields[0])
            items.append(fields[1])
            lines.append(line_number)
    if not lines:
        raise UserError(f"{path}: empty file, expected lines of 'user item'")
    return EventLog.from_strings(str(path), np.asarray(users, dtype=str),
                                 np.asarray(items, dtype=str),
                                 np.arange(len(lines), dtype=np.float64))


def _arrow_sasrec(path: Path, encoding: str) -> EventLog | None:
    """``user item`` lines read by Arrow as two space-separated columns, or None (the exact
    reader, which splits on any whitespace, then reads them or names the line at fault)."""
    if _open_text_check(path, encoding):
        return None
    types = {"user": ID_TYPE, "item": ID_TYPE}

    def batches():
        parse = pa_csv.ParseOptions(delimiter=" ", quote_char=False)
        for batch in stream_csv(path, encoding, parse, types, column_names=list(types)):
            yield batch.column("user"), batch.column("item"), None

    return arrow_or_none(lambda: arrow_log(path, batches(), separators="\\s"))


def _open_text_check(path: Path, encoding: str) -> bool:
    """Whether opening ``path`` as ``encoding`` text fails (the exact reader then says why)."""
    try:
        with open_text(path, encoding):
            return False
    except UserError:
        return True


def read_log(path: Path, fmt: str, columns: Columns = DEFAULT_COLUMNS,
             delimiter: str | None = None, encoding: str = DEFAULT_ENCODING) -> EventLog:
    """Reads an interaction log of format ``fmt`` (one of :data:`FORMATS`), decoded with
    ``encoding``."""
    readers = {"csv": lambda: read_csv(path, columns, delimiter, encoding),
               "sasrec": lambda: read_sasrec(path, encoding),
               "recbole": lambda: read_recbole(path, columns, encoding),
               "parquet": lambda: read_parquet(path, columns)}
    if fmt not in readers:
        raise UserError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    log = readers[fmt]()
    # Arrow's allocator keeps freed pages for reuse: the parse's gigabytes go back to the system
    # before the dataset is built (a 10^8-event import peaked at 13.7 GB without this, 8.0 with).
    pa.default_memory_pool().release_unused()
    return log


def export_sasrec(dataset: Dataset, path: Path) -> None:
    """Writes ``user item`` lines in time order, with the dataset's original ids."""
    items, offsets = full_sequences(dataset)
    users = np.repeat(np.arange(dataset.num_users), np.diff(offsets))
    lines = np.char.add(np.char.add(dataset.user_ids[users], " "), dataset.item_ids[items])
    write_text_atomic(path, "\n".join(lines.tolist()) + "\n")
