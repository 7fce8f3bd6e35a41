"""An interaction log as columns, opening a log's text, and reading it with Arrow batch by batch.

An :class:`EventLog` is what every reader of :mod:`mqsa_jax.data.importers` returns and
:func:`mqsa_jax.data.from_log.build_dataset` takes.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from mqsa_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class EventLog:
    """Events in file order (a stable sort by time keeps ties in file order), as columns.

    ``users`` and ``items`` [E] are codes into ``user_ids`` and ``item_ids``, the distinct ids
    as the file spells them; ``times`` [E] float64 (the file order where there is no time).
    """

    source: str
    users: np.ndarray
    items: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    times: np.ndarray

    @classmethod
    def from_strings(cls, source: str, users: np.ndarray, items: np.ndarray,
                     times: np.ndarray) -> EventLog:
        user_ids, user_codes = np.unique(users, return_inverse=True)
        item_ids, item_codes = np.unique(items, return_inverse=True)
        return cls(source, user_codes, item_codes, user_ids, item_ids, times)

    @classmethod
    def from_arrow(cls, source: str, users: pa.ChunkedArray, items: pa.ChunkedArray,
                   times: np.ndarray) -> EventLog:
        user_ids, user_codes = _encode(users)
        item_ids, item_codes = _encode(items)
        return cls(source, user_codes, item_codes, user_ids, item_ids, times)


def _encode(ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ids as a numpy str array, [E] int32 code of each entry), by hashing (chunks
    already dictionary-encoded are unified)."""
    encoded = ids.dictionary_encode().combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return np.asarray(encoded.dictionary.to_pylist(), dtype=str), codes


@dataclasses.dataclass(frozen=True)
class Columns:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"


DEFAULT_COLUMNS = Columns()
DEFAULT_ENCODING = "utf-8"


@contextlib.contextmanager
def open_text(path: Path, encoding: str):
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


# Ids are read as a dictionary type: each batch (CSV block, Parquet row group) comes decoded
# into its distinct ids and an int32 code per event, so the checks and the trim below run on
# the distinct ids, not on every event's string (a 10^7-event log: 2.2 s less on either format).
ID_TYPE = pa.dictionary(pa.int32(), pa.string())


def _ids_ok(ids: pa.Array, separators: str) -> bool:
    """No id of ``ids`` (already stripped) is null or empty or holds a NUL byte or one of
    ``separators``."""
    return not (ids.null_count or (len(ids) and pc.min(pc.utf8_length(ids)).as_py() == 0)
                or pc.any(pc.match_substring_regex(ids, "[\\x00" + separators + "]")).as_py())


def _checked_codes(ids: pa.Array, separators: str) -> pa.DictionaryArray | None:
    """A batch's ids, stripped (as the exact reader strips them) and dictionary-encoded, or None
    where an id is empty or holds a NUL byte (or one of ``separators``, a regex class)."""
    if pa.types.is_dictionary(ids.type):
        distinct = ids.dictionary
        if (not ids.null_count and _ids_ok(distinct, separators)
                and pc.all(pc.equal(pc.utf8_trim_whitespace(distinct), distinct)).as_py()):
            return ids
        # Rare: an id to strip (two spellings may become one), or a check to make per event.
        ids = ids.dictionary_decode()
    ids = pc.utf8_trim_whitespace(ids)
    return ids.dictionary_encode() if _ids_ok(ids, separators) else None


def arrow_log(path: Path, batches, separators: str = "") -> EventLog | None:
    """The log of Arrow's columns, read batch by batch, or None where the exact reader must
    read it (an empty or NUL-holding id, a time that is not a finite number, no event).

    Each batch's id strings are dictionary-encoded as soon as it is read, so a streamed file's
    text is never all in memory: what stays is an int32 code per event and each batch's
    distinct ids, unified at the end.

    Args:
      path: the file, for the log's source.
      batches: yields ``(users, items, times)``: Arrow string arrays of one batch and its
        float64 times (None for every batch where the file order is the time order).
      separators: characters no id may hold, as a regex class (sasrec's whitespace).
    """
    users, items, times = [], [], []
    for batch_users, batch_items, batch_times in batches:
        codes = [_checked_codes(ids, separators) for ids in (batch_users, batch_items)]
        if None in codes or (batch_times is not None and not np.isfinite(batch_times).all()):
            return None
        users.append(codes[0])
        items.append(codes[1])
        if batch_times is not None:
            times.append(batch_times)
    count = sum(len(codes) for codes in users)
    if not count:
        return None
    times = np.concatenate(times) if times else np.arange(count, dtype=np.float64)
    return EventLog.from_arrow(str(path), pa.chunked_array(users), pa.chunked_array(items),
                               times)


# Bytes of text per streamed batch: large enough that the batches' own dictionaries of item ids
# stay small beside the log, small enough that the parse never holds much of the file.
STREAM_BLOCK = 64 << 20


def stream_csv(path: Path, encoding: str, parse: pa_csv.ParseOptions, types: dict,
                column_names: list[str] | None = None):
    """Arrow's streaming reader over ``path``: record batches of ``types``' columns
    (``column_names``: the file has no header, its columns are these)."""
    return pa_csv.open_csv(
        path, read_options=pa_csv.ReadOptions(encoding=encoding, block_size=STREAM_BLOCK,
                                              column_names=column_names or []),
        parse_options=parse,
        convert_options=pa_csv.ConvertOptions(column_types=types, include_columns=list(types)))


def arrow_or_none(read):
    """``read()``, or None where Arrow refuses the file (the exact reader then reads it)."""
    try:
        return read()
    except (pa.ArrowException, ValueError, OSError):
        return None
