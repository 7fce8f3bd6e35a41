"""Dataset names: the four built-in datasets and the user's imported ones, and where they live.

The user data directory (``--data-dir``, else ``$MQSA_DATA_DIR``, else
``~/.local/share/mqsa-jax``) holds::

    imported/<name>.npz                    stores written by `mqsa-jax data import`
    tfds/mqsa_sequences/<name>/2.0.0/      TFDS datasets prepared from the stores (built-in too)

Built-in stores ship inside the package (``mqsa_jax/data/builtin``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mqsa_jax.data import tfds_dataset
from mqsa_jax.data.dataset import Dataset, load_id_maps, load_item_ids
from mqsa_jax.data.release import RELEASE_DATASETS
from mqsa_jax.errors import UserError

BUILTIN_DIR = Path(__file__).parent / "builtin"
_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")


def data_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get("MQSA_DATA_DIR"):
        return Path(os.environ["MQSA_DATA_DIR"]).expanduser()
    return Path.home() / ".local" / "share" / "mqsa-jax"


def check_new_name(name: str) -> None:
    if not _NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"dataset name {name!r}: expected lower-case letters, digits and '_', "
            "starting with a letter"
        )
    if name in RELEASE_DATASETS:
        raise UserError(f"dataset name {name!r} is a built-in dataset; choose another name")


def imported_store(name: str, root: Path) -> Path:
    return root / "imported" / f"{name}.npz"


def store_path(name: str, root: Path) -> Path:
    if name in RELEASE_DATASETS:
        return BUILTIN_DIR / f"{name}.npz"
    path = imported_store(name, root)
    if not path.is_file():
        known = ", ".join(list_datasets(root))
        raise UserError(f"unknown dataset {name!r} (known: {known}; data directory {root})")
    return path


def list_datasets(root: Path) -> list[str]:
    imported = sorted(p.stem for p in (root / "imported").glob("*.npz"))
    return list(RELEASE_DATASETS) + [n for n in imported if n not in RELEASE_DATASETS]


def prepare_dataset(name: str, root: Path | None = None) -> Path:
    """The prepared TFDS directory of a dataset, written on first use."""
    root = data_dir(root)
    return tfds_dataset.prepare(store_path(name, root), name, root / "tfds")


def load_dataset(name: str, root: Path | None = None,
                 shard: tuple[int, int] = (0, 1)) -> Dataset:
    """Loads a dataset by name through its TFDS data source, preparing it on first use; with
    ``shard`` ``(k, K)``, only the users of the k-th of K equal runs of its records."""
    root = data_dir(root)
    store = store_path(name, root)
    prepared = prepare_dataset(name, root)
    records = None if shard[1] == 1 else tfds_dataset.shard_records(prepared, *shard)
    # The sequences come through TFDS; the id maps travel in the store only.
    return tfds_dataset.load(prepared, name, *load_id_maps(store), records=records)


def catalogue_ids(name: str, root: Path | None = None) -> np.ndarray:
    """[N] a dataset's item ids in its dense order, read from its store alone."""
    return load_item_ids(store_path(name, data_dir(root)))
