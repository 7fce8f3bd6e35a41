"""Safe reader for the authors' release files (pickled NumPy object arrays).

A pickle can run arbitrary code, so the release format is read through an unpickler that admits
only the three globals the release uses (reference, section Data) and refuses any other.  The
converter also checks each file's SHA-256 against the release's ``SHA256SUMS`` before reading it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from mqsa_jax.data.dataset import Dataset, save_store
from mqsa_jax.errors import UserError
from mqsa_jax.io import file_sha256

RELEASE_DATASETS = ("beauty", "sports", "toys", "yelp")

# The globals that may appear in a release pickle, mapped to what they resolve to.  NumPy 2 moved
# ``numpy.core`` to ``numpy._core``; the pickles name the old path.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
}


class _ReleaseUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(
                f"{self._source}: refused to load: the pickle names the global {module}.{name}; "
                "only numpy.ndarray, numpy.dtype and numpy.core.multiarray._reconstruct are allowed"
            ) from None

    def persistent_load(self, pid):
        raise UserError(f"{self._source}: refused to load: the pickle uses persistent ids")


def read_checksums(sums_file: Path) -> dict[str, str]:
    sums = {}
    for lineno, line in enumerate(sums_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise UserError(f"{sums_file}:{lineno}: expected '<sha256>  <file name>'")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def verify_checksum(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(
            f"{path}: SHA-256 mismatch (expected {expected}, got {actual}): "
            "the file is truncated or altered"
        )


def load_release_file(path: Path) -> tuple[dict, dict, dict, int, int]:
    """Returns ``(train, valid, test, num_users, num_items)`` from one release ``.npy``."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(stream)
    except (ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a NumPy .npy file ({e})") from None
    if dtype != np.dtype(object) or shape != (5,):
        raise UserError(f"{path}: expected an object array of 5 entries, found {dtype} {shape}")
    try:
        array = _ReleaseUnpickler(stream, source).load()
    except UserError:
        raise
    except Exception as e:  # truncated or corrupt pickle streams raise many types
        raise UserError(f"{path}: corrupt pickle stream ({type(e).__name__}: {e})") from None
    if not isinstance(array, np.ndarray) or array.shape != (5,):
        raise UserError(f"{path}: expected [train, valid, test, num_users, num_items]")
    train, valid, test, num_users, num_items = array
    if not (isinstance(train, dict) and isinstance(valid, dict) and isinstance(test, dict)):
        raise UserError(f"{path}: expected train, valid and test to be dicts")
    return train, valid, test, int(num_users), int(num_items)


def release_to_dataset(name: str, path: Path) -> Dataset:
    train, valid, test, num_users, num_items = load_release_file(path)
    users = range(num_users)
    if not all(u in train and u in valid and u in test for u in users):
        raise UserError(f"{path}: every user 0..{num_users - 1} needs train, valid and test")
    lengths = np.fromiter((len(train[u]) for u in users), dtype=np.int64, count=num_users)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.fromiter((i for u in users for i in train[u]), dtype=np.int32, count=offsets[-1])
    dataset = Dataset(
        name=name,
        train_items=items,
        train_offsets=offsets,
        valid=np.fromiter((valid[u] for u in users), dtype=np.int32, count=num_users),
        test=np.fromiter((test[u] for u in users), dtype=np.int32, count=num_users),
        num_items=num_items,
        user_ids=np.arange(num_users).astype(str),
        item_ids=np.arange(num_items).astype(str),
    )
    dataset.validate(str(path))
    return dataset


def convert_release(release_dir: Path, out_dir: Path, names=RELEASE_DATASETS) -> list[Dataset]:
    """Verifies and converts release files into stores ``out_dir/<name>.npz``."""
    sums_file = release_dir / "SHA256SUMS"
    if not sums_file.is_file():
        raise UserError(f"{sums_file}: checksum file not found")
    sums = read_checksums(sums_file)
    converted = []
    for name in names:
        path = release_dir / f"{name}.npy"
        if path.name not in sums:
            raise UserError(f"{sums_file}: no checksum listed for {path.name}")
        verify_checksum(path, sums[path.name])
        dataset = release_to_dataset(name, path)
        save_store(dataset, out_dir / f"{name}.npz")
        converted.append(dataset)
    return converted
