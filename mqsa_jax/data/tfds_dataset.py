"""Datasets as TFDS builders over array_record files, read through TFDS data sources.

TensorFlow is not needed: the builder writes array_record files, and reading goes through
``as_data_source()``.  One example per user: ``{"user", "train", "valid", "test"}``.  The
dataset's statistics are in the builder's metadata, so ``tfds.builder_from_directory`` alone
tells what a prepared dataset holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mqsa_jax.data.dataset import Dataset, load_store

BUILDER_NAME = "mqsa_sequences"
SPLIT = "users"

tfds.display_progress_bar(False)
logging.getLogger("absl").setLevel(logging.ERROR)


class SequenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Prepares one dataset (the builder config's name) from its pickle-free store."""

    name = BUILDER_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Per user: time-ordered training items, one valid and one test item."}

    def __init__(self, *, store: Path, dataset_name: str, data_dir: Path):
        self._dataset = load_store(store, dataset_name)
        self._store_sha256 = file_sha256(store)
        super().__init__(
            data_dir=str(data_dir),
            config=tfds.core.BuilderConfig(name=dataset_name),
            file_format="array_record",
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Leave-one-out interaction sequences for sequential recommendation.",
            features=tfds.features.FeaturesDict(
                {
                    "user": np.int32,
                    "train": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "valid": np.int32,
                    "test": np.int32,
                }
            ),
            metadata=tfds.core.MetadataDict(
                **self._dataset.statistics(), store_sha256=self._store_sha256
            ),
        )

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        dataset = self._dataset
        for user in range(dataset.num_users):
            yield user, {
                "user": user,
                "train": dataset.train_sequence(user),
                "valid": dataset.valid[user],
                "test": dataset.test[user],
            }


def prepared_dir(tfds_root: Path, dataset_name: str) -> Path:
    return tfds_root / BUILDER_NAME / dataset_name / str(SequenceBuilder.VERSION)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return target


def read_sequences(prepared: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads a prepared dataset through its TFDS data source.

    Returns the metadata and, ordered by user, the concatenated train items, their offsets, and
    the valid and test items.
    """
    builder = tfds.builder_from_directory(str(prepared))
    source = builder.as_data_source()[SPLIT]
    records = source.__getitems__(range(len(source)))
    users = np.fromiter((r["user"] for r in records), dtype=np.int64, count=len(records))
    order = np.argsort(users)
    ordered = [records[i] for i in order]
    lengths = np.fromiter((len(r["train"]) for r in ordered), dtype=np.int64, count=len(ordered))
    offsets = np.zeros(len(ordered) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    train = np.concatenate([r["train"] for r in ordered]).astype(np.int32)
    valid = np.fromiter((r["valid"] for r in ordered), dtype=np.int32, count=len(ordered))
    test = np.fromiter((r["test"] for r in ordered), dtype=np.int32, count=len(ordered))
    return dict(builder.info.metadata), train, offsets, valid, test


def load(prepared: Path, dataset_name: str, user_ids: np.ndarray, item_ids: np.ndarray) -> Dataset:
    metadata, train, offsets, valid, test = read_sequences(prepared)
    dataset = Dataset(
        name=dataset_name,
        train_items=train,
        train_offsets=offsets,
        valid=valid,
        test=test,
        num_items=int(metadata["num_items"]),
        user_ids=user_ids,
        item_ids=item_ids,
    )
    dataset.validate(str(prepared))
    return dataset
