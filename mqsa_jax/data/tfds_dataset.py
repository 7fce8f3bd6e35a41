"""Datasets as TFDS builders over array_record files, read through TFDS data sources.

TensorFlow is not needed: the builder writes array_record files, and reading goes through
``as_data_source()``.  One example holds a block of :data:`USERS_PER_RECORD` consecutive users
as columns (``first_user``; each user's training ``lengths``, the ``train`` items end to end, and
the ``valid`` and ``test`` items; raw bytes, no per-value encoding), so a log of millions of
users is written and read in thousands of records, with no Python work per user or event.  A
process that trains on some users reads only their records, by index (:func:`load`).  The
dataset's statistics are in the builder's metadata, so ``tfds.builder_from_directory`` alone
tells what a prepared dataset holds.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mqsa_jax.data.dataset import LEAVE_ONE_OUT, Dataset, load_store
from mqsa_jax.errors import UserError
from mqsa_jax.io import file_sha256
from mqsa_jax.quiet import logger_level
from mqsa_jax.rounding import ceil_div

BUILDER_NAME = "mqsa_sequences"
SPLIT = "users"
# Users per record: a record of a log's users is a few tens of KiB, and 10^7 users are 10^4
# records.
USERS_PER_RECORD = 1024
_COLUMN = functools.partial(tfds.features.Tensor, shape=(None,), dtype=np.int32,
                            encoding=tfds.features.Encoding.BYTES)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """TFDS's progress bars and absl's lines off while TFDS works here, as they were after: our
    own lines say what happens (TFDS has no getter for its bars' switch, hence the read)."""
    bars = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        with logger_level("absl", logging.ERROR):
            yield
    finally:
        tfds.display_progress_bar(bars)


class _LocalInfo(tfds.core.DatasetInfo):
    """A dataset's info that never looks for TFDS's published copy: ours has none, and the
    lookup made an empty ``/tmp/tmp*tfds`` folder at each preparation and left it there."""

    def initialize_from_bucket(self) -> None:
        pass


class SequenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Prepares one dataset (the builder config's name) from its pickle-free store."""

    name = BUILDER_NAME
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Per user: time-ordered training items, one valid and one test item.",
        "2.0.0": "Records of 1,024 users each, as columns.",
    }

    def __init__(self, *, store: Path, dataset_name: str, data_dir: Path):
        self._dataset = load_store(store, dataset_name)
        self._store_sha256 = file_sha256(store)
        super().__init__(
            data_dir=str(data_dir),
            config=tfds.core.BuilderConfig(name=dataset_name),
            file_format="array_record",
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalInfo(
            builder=self,
            description="Interaction sequences for sequential recommendation.",
            features=tfds.features.FeaturesDict(
                {
                    "first_user": np.int64,
                    "lengths": _COLUMN(),
                    "train": _COLUMN(),
                    "valid": _COLUMN(),
                    "test": _COLUMN(),
                }
            ),
            # Record k holds users k * USERS_PER_RECORD onwards: a process's users are a range
            # of record indices.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                **self._dataset.statistics(), store_sha256=self._store_sha256
            ),
        )

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        dataset = self._dataset
        for record, first in enumerate(range(0, dataset.num_users, USERS_PER_RECORD)):
            end = min(first + USERS_PER_RECORD, dataset.num_users)
            offsets = dataset.train_offsets
            yield record, {
                "first_user": first,
                "lengths": np.diff(offsets[first:end + 1]).astype(np.int32),
                "train": dataset.train_items[offsets[first]:offsets[end]],
                "valid": dataset.valid[first:end],
                "test": dataset.test[first:end],
            }


def prepared_dir(tfds_root: Path, dataset_name: str) -> Path:
    return tfds_root / BUILDER_NAME / dataset_name / str(SequenceBuilder.VERSION)


def _prepared_from(target: Path) -> str | None:
    """The SHA-256 of the store a prepared dataset was built from, or None if it is incomplete."""
    try:
        return json.loads((target / "metadata.json").read_text()).get("store_sha256")
    except (OSError, ValueError):
        return None


def prepare(store: Path, dataset_name: str, tfds_root: Path) -> Path:
    """Builds the TFDS dataset from ``store`` unless it is already built from this very store.

    The store is the source of truth: a prepared dataset whose recorded store checksum differs
    (the store was re-imported) is rebuilt.  TFDS writes into a temporary folder and renames it,
    so an interrupted preparation leaves nothing that looks complete.
    """
    target = prepared_dir(tfds_root, dataset_name)
    if _prepared_from(target) == file_sha256(store):
        return target
    shutil.rmtree(target, ignore_errors=True)
    builder = SequenceBuilder(store=store, dataset_name=dataset_name, data_dir=tfds_root)
    print(f"preparing dataset {dataset_name} in {tfds_root}", file=sys.stderr, flush=True)
    # TFDS prints its own lines about downloading, which never happens here: they are dropped.
    with contextlib.redirect_stdout(io.StringIO()), _quiet_tfds():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return target


def num_records(num_users: int) -> int:
    """How many records hold ``num_users`` users."""
    return ceil_div(num_users, USERS_PER_RECORD)


class TooFewRecords(UserError):
    """A dataset has fewer records than the shards it was to be split into."""


def shard_records(prepared: Path, index: int, count: int) -> list[int]:
    """The records of shard ``index`` of ``count`` equal runs of a prepared dataset's records
    (consecutive users); :class:`TooFewRecords` where a shard would get none."""
    with _quiet_tfds():
        records = tfds.builder_from_directory(str(prepared)).info.splits[SPLIT].num_examples
    if records < count:
        raise TooFewRecords(f"{prepared}: {records} record(s) for {count} shards")
    return np.array_split(np.arange(records), count)[index].tolist()


def read_sequences(prepared: Path, records: Sequence[int] | None = None
                   ) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads records of a prepared dataset through its TFDS data source.

    Args:
      prepared: the prepared dataset's directory.
      records: which records (each :data:`USERS_PER_RECORD` users; None: all).

    Returns:
      The metadata and, ordered by user, the users read [U'], their concatenated train items,
      their offsets [U' + 1], and their valid and test items [U'].
    """
    with _quiet_tfds():
        builder = tfds.builder_from_directory(str(prepared))
        source = builder.as_data_source()[SPLIT]
        blocks = source.__getitems__(range(len(source)) if records is None else sorted(records))
    lengths = np.concatenate([b["lengths"] for b in blocks] or [np.zeros(0, np.int32)])
    users = np.concatenate([int(b["first_user"]) + np.arange(len(b["lengths"]))
                            for b in blocks] or [np.zeros(0, np.int64)])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def column(name):
        return np.concatenate([b[name] for b in blocks] or [np.zeros(0, np.int32)])

    return (dict(builder.info.metadata), users, column("train"), offsets, column("valid"),
            column("test"))


def load(prepared: Path, dataset_name: str, user_ids: np.ndarray, item_ids: np.ndarray,
         records: Sequence[int] | None = None) -> Dataset:
    """The dataset of a prepared directory: its users of ``records`` (None: every user)."""
    metadata, users, train, offsets, valid, test = read_sequences(prepared, records)
    dataset = Dataset(
        name=dataset_name,
        train_items=train,
        train_offsets=offsets,
        valid=valid,
        test=test,
        num_items=int(metadata["num_items"]),
        user_ids=user_ids[users],
        item_ids=item_ids,
        # Prepared before the split was recorded: leave-one-out, the only split then.
        split=dict(metadata.get("split", {"kind": LEAVE_ONE_OUT})),
    )
    dataset.validate(str(prepared))
    return dataset
