"""The in-memory dataset and its pickle-free on-disk store.

A dataset is, per user, the time-ordered training items plus one validation and one test item,
and the maps from the dense ids back to the ids of the source.  Its ``split`` says how the
targets were chosen: leave-one-out (each user's last two events, the paper's protocol), or
temporal (each user's first two events after a global time cut, :mod:`mqsa_jax.data.from_log`;
a user with fewer has -1 for the missing targets, and is not ranked on that split).  On disk it
is one ``.npz`` of plain arrays, read with ``allow_pickle=False``:

- ``train_items`` (int32) and ``train_offsets`` (int64, ``num_users + 1``): the concatenated
  training sequences, user ``u`` owning ``train_items[train_offsets[u]:train_offsets[u + 1]]``;
- ``valid``, ``test`` (int32, ``num_users``);
- ``user_ids``, ``item_ids`` (unicode): original ids, indexed by dense id;
- ``num_items`` (int64 scalar);
- ``split`` (a unicode scalar, JSON), for a temporal split; absent: leave-one-out.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np

from mqsa_jax.errors import UserError
from mqsa_jax.io import atomic_output

_STORE_KEYS = ("train_items", "train_offsets", "valid", "test", "user_ids", "item_ids", "num_items")
LEAVE_ONE_OUT = "leave_one_out"
TEMPORAL = "temporal"
NO_TARGET = -1  # a temporal split's user without a valid (or test) target


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Time-ordered sequences with dense ids: items ``0..num_items-1``, users
    ``0..num_users-1``.  ``split``: ``{"kind": "leave_one_out"}``, or ``{"kind": "temporal",
    "cutoff": time}``."""

    name: str
    train_items: np.ndarray
    train_offsets: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    split: dict = dataclasses.field(default_factory=lambda: {"kind": LEAVE_ONE_OUT})

    @property
    def num_users(self) -> int:
        return len(self.valid)

    @property
    def num_interactions(self) -> int:
        return len(self.train_items) + int((self.valid >= 0).sum() + (self.test >= 0).sum())

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.train_offsets)

    def train_sequence(self, user: int) -> np.ndarray:
        return self.train_items[self.train_offsets[user] : self.train_offsets[user + 1]]

    def statistics(self) -> dict:
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.num_interactions,
            "avg_seq_len": round(self.num_interactions / max(self.num_users, 1), 4),
            "split": self.split,
        }

    @property
    def _lowest_target(self) -> int:
        return NO_TARGET if self.split.get("kind") == TEMPORAL else 0

    def validate(self, source: str) -> None:
        """Checks the invariants every consumer relies on; ``source`` names the file in errors."""
        offsets = self.train_offsets
        problems = []
        if offsets.ndim != 1 or len(offsets) != self.num_users + 1 or offsets[0] != 0:
            problems.append("train_offsets must have num_users + 1 entries starting at 0")
        elif offsets[-1] != len(self.train_items) or np.any(np.diff(offsets) < 1):
            problems.append("train_offsets must be increasing and end at len(train_items)")
        for key, low in (("train_items", 0), ("valid", self._lowest_target),
                         ("test", self._lowest_target)):
            values = getattr(self, key)
            if len(values) and (values.min() < low or values.max() >= self.num_items):
                problems.append(f"{key} has item ids outside {low}..{self.num_items - 1}")
        if np.any((self.test >= 0) & (self.valid < 0)):
            problems.append("a user with a test target must have a valid one")
        if len(self.test) != self.num_users or len(self.user_ids) != self.num_users:
            problems.append("valid, test and user_ids must have one entry per user")
        if len(self.item_ids) != self.num_items:
            problems.append("item_ids must have num_items entries")
        if problems:
            raise UserError(f"{source}: not a valid mqsa-jax dataset: {problems[0]}")


def save_store(dataset: Dataset, path: Path) -> None:
    """Writes ``dataset`` to ``path`` atomically: a reader sees the old file or the new one."""
    with atomic_output(path) as f:
        # Uncompressed: a 10^7-event store wrote in 6 s compressed, and its size is small beside
        # the log's.
        np.savez(
            f,
            train_items=dataset.train_items.astype(np.int32),
            train_offsets=dataset.train_offsets.astype(np.int64),
            valid=dataset.valid.astype(np.int32),
            test=dataset.test.astype(np.int32),
            user_ids=np.asarray(dataset.user_ids, dtype=str),
            item_ids=np.asarray(dataset.item_ids, dtype=str),
            num_items=np.int64(dataset.num_items),
            # Leave-one-out is what a store without a split holds (as stores did before).
            **({} if dataset.split["kind"] == LEAVE_ONE_OUT else
               {"split": np.str_(json.dumps(dataset.split))}),
        )


def _read_arrays(path: Path, keys, optional=()) -> dict[str, np.ndarray]:
    """The named arrays of a store, and those of ``optional`` it has (an npz reads only the
    members asked for); never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{path}: not a valid mqsa-jax dataset: missing arrays {missing}")
            return {k: npz[k] for k in (*keys, *optional) if k in npz.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such dataset file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable mqsa-jax dataset ({e})") from None


def load_id_maps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The store's (user_ids, item_ids): the maps from dense ids back to the source's ids."""
    arrays = _read_arrays(path, ("user_ids", "item_ids"))
    return arrays["user_ids"], arrays["item_ids"]


def load_item_ids(path: Path) -> np.ndarray:
    """The store's item_ids alone: [N] the source id of each dense item id."""
    return _read_arrays(path, ("item_ids",))["item_ids"]


def load_store(path: Path, name: str) -> Dataset:
    """Reads a store written by :func:`save_store`."""
    arrays = _read_arrays(path, _STORE_KEYS, optional=("split",))
    dataset = Dataset(
        name=name,
        train_items=arrays["train_items"].astype(np.int32),
        train_offsets=arrays["train_offsets"].astype(np.int64),
        valid=arrays["valid"].astype(np.int32),
        test=arrays["test"].astype(np.int32),
        num_items=int(arrays["num_items"]),
        user_ids=arrays["user_ids"],
        item_ids=arrays["item_ids"],
        split=json.loads(str(arrays["split"])) if "split" in arrays else {"kind": LEAVE_ONE_OUT},
    )
    dataset.validate(str(path))
    return dataset


def from_full_sequences(
    name: str, items: np.ndarray, offsets: np.ndarray, num_items: int, user_ids, item_ids
) -> Dataset:
    """Leave-one-out split of full time-ordered sequences (each at least 3 long)."""
    ends = offsets[1:]
    lengths = np.diff(offsets)
    keep = np.ones(len(items), dtype=bool)
    keep[ends - 1] = False
    keep[ends - 2] = False
    train_offsets = np.zeros_like(offsets)
    np.cumsum(lengths - 2, out=train_offsets[1:])
    return Dataset(
        name=name,
        train_items=items[keep].astype(np.int32),
        train_offsets=train_offsets.astype(np.int64),
        valid=items[ends - 2].astype(np.int32),
        test=items[ends - 1].astype(np.int32),
        num_items=int(num_items),
        user_ids=np.asarray(user_ids, dtype=str),
        item_ids=np.asarray(item_ids, dtype=str),
    )


def full_sequences(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`from_full_sequences`: (items, offsets) of train + valid + test (the
    targets a user has: all of them but in a temporal split)."""
    has_valid, has_test = dataset.valid >= 0, dataset.test >= 0
    offsets = np.zeros(dataset.num_users + 1, dtype=np.int64)
    np.cumsum(dataset.train_lengths + has_valid + has_test, out=offsets[1:])
    items = np.empty(offsets[-1], dtype=np.int32)
    test_at = offsets[1:][has_test] - 1
    valid_at = (offsets[1:] - 1 - has_test)[has_valid]
    is_train = np.ones(len(items), dtype=bool)
    is_train[test_at] = is_train[valid_at] = False
    items[is_train] = dataset.train_items
    items[valid_at] = dataset.valid[has_valid]
    items[test_at] = dataset.test[has_test]
    return items, offsets
