"""An interaction log as columns, and opening a log's text.

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
    """(distinct ids as a numpy str array, [E] int32 code of each entry), by hashing."""
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


def arrow_log(path: Path, users: pa.ChunkedArray, items: pa.ChunkedArray,
               times: np.ndarray | None, separators: str = "") -> EventLog | None:
    """The log of Arrow's id columns (stripped, as the exact reader strips them), or None
    where an id is empty or holds a NUL byte (or one of ``separators``, a regex class)."""
    if len(users) == 0:
        return None
    users, items = pc.utf8_trim_whitespace(users), pc.utf8_trim_whitespace(items)
    forbidden = "[\\x00" + separators + "]"
    for ids in (users, items):
        if ids.null_count or pc.min(pc.utf8_length(ids)).as_py() == 0 or pc.any(
                pc.match_substring_regex(ids, forbidden)).as_py():
            return None
    if times is None:  # the file order is the time order
        times = np.arange(len(users), dtype=np.float64)
    return EventLog.from_arrow(str(path), users, items, times)
