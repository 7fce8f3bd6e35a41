"""Atomic file output: a reader, or a run resumed after an interruption, sees the old file or the
new one, never half of one, and an interrupted write leaves no temporary file behind.  The one
file appended to instead (a run's metrics, :mod:`mqsa_jax.rundir`) is read back by complete
lines only.  Files are also hashed here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yields a binary file that replaces ``path`` when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder: os.replace is atomic only within one file system, and two
    # writers of the same path must not share a temporary.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, mode)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, without a last line that a writer is still appending."""
    return [json.loads(line) for line in Path(path).read_text().split("\n")[:-1] if line.strip()]


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (a store of 10^8 events is a GB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
