"""Reading a user's interaction log: the csv, sasrec and recbole formats, and sasrec export.

Readers return an :class:`EventLog` (one entry per event, ids kept as the strings of the file);
:func:`mqsa_jax.data.from_log.build_dataset` makes the dataset from it.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
from pathlib import Path

import numpy as np

from mqsa_jax.data.dataset import Dataset, full_sequences
from mqsa_jax.errors import UserError
from mqsa_jax.io import write_text_atomic

FORMATS = ("csv", "sasrec", "recbole")


@dataclasses.dataclass(frozen=True)
class EventLog:
    """Events in file order. ``lines`` are 1-based source line numbers (ties keep file order)."""

    source: str
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    lines: np.ndarray


@dataclasses.dataclass(frozen=True)
class Columns:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"


DEFAULT_ENCODING = "utf-8"


@contextlib.contextmanager
def _open_text(path: Path, encoding: str):
    """``path`` as text; a byte that does not decode ends in one line naming its line."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"--encoding {encoding!r}: not a known text encoding") from None
    try:
        f = open(path, newline="", encoding=encoding)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        try:
            yield f
        except UnicodeDecodeError as e:
            raise UserError(_undecodable(path, encoding, e)) from None


def _undecodable(path: Path, encoding: str, error: UnicodeDecodeError) -> str:
    """Where the file stops decoding: its first line that does not decode, and the byte."""
    hint = "pass --encoding (for example --encoding latin-1)"
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as e:
                return (f"{path}:{number}: byte 0x{raw[e.start]:02x} at column {e.start + 1} "
                        f"is not {encoding} text (a binary file?); {hint}")
    return f"{path}: not {encoding} text ({error.reason}); {hint}"


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
    with _open_text(path, encoding) as f:
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
    line_numbers = np.asarray(lines, dtype=np.int64)
    # Without a time column the file order is the time order.
    event_times = (
        _parse_times(path, times, lines) if t is not None else line_numbers.astype(np.float64)
    )
    return EventLog(
        str(path), np.asarray(users, dtype=str), np.asarray(items, dtype=str), event_times,
        line_numbers,
    )


def read_csv(path: Path, columns: Columns = Columns(), delimiter: str | None = None,
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


def read_recbole(path: Path, columns: Columns = Columns(),
                 encoding: str = DEFAULT_ENCODING) -> EventLog:
    """RecBole atomic ``.inter`` file: tab-separated, ``name:type`` header fields.

    The time column is optional there; without it the file order is taken as the time order.
    """
    return _read_table(path, "\t", _recbole_header, columns, need_time=False, encoding=encoding)


def read_sasrec(path: Path, encoding: str = DEFAULT_ENCODING) -> EventLog:
    """SASRec-style text: one ``user item`` pair a line, already in time order."""
    users, items, lines = [], [], []
    with _open_text(path, encoding) as f:
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
    line_numbers = np.asarray(lines, dtype=np.int64)
    return EventLog(
        str(path), np.asarray(users, dtype=str), np.asarray(items, dtype=str),
        line_numbers.astype(np.float64), line_numbers,
    )


def read_log(path: Path, fmt: str, columns: Columns = Columns(), delimiter: str | None = None,
             encoding: str = DEFAULT_ENCODING) -> EventLog:
    """Reads an interaction log of format ``fmt`` (one of :data:`FORMATS`), decoded with
    ``encoding``."""
    if fmt == "csv":
        return read_csv(path, columns, delimiter, encoding)
    if fmt == "sasrec":
        return read_sasrec(path, encoding)
    if fmt == "recbole":
        return read_recbole(path, columns, encoding)
    raise UserError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def export_sasrec(dataset: Dataset, path: Path) -> None:
    """Writes ``user item`` lines in time order, with the dataset's original ids."""
    items, offsets = full_sequences(dataset)
    users = np.repeat(np.arange(dataset.num_users), np.diff(offsets))
    lines = np.char.add(np.char.add(dataset.user_ids[users], " "), dataset.item_ids[items])
    write_text_atomic(path, "\n".join(lines.tolist()) + "\n")
