"""A dataset from an event log: the k-core filter, dense ids and the leave-one-out split.

Pure NumPy, every step vectorised.
"""

from __future__ import annotations

import numpy as np

from mqsa_jax.data.dataset import Dataset, from_full_sequences
from mqsa_jax.data.importers import EventLog
from mqsa_jax.errors import UserError

MIN_EVENTS_PER_USER = 3  # leave-one-out needs at least one training item besides valid and test


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the events kept by the iterative k-core filter, and the number of passes.

    ``users`` and ``items`` are dense codes.  Each pass drops the events of users and items with
    fewer than ``k`` events among those still kept, until a pass drops nothing.
    """
    keep = np.ones(len(users), dtype=bool)
    passes = 0
    while True:
        passes += 1
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        next_keep = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if np.array_equal(next_keep, keep):
            return keep, passes
        keep = next_keep


def dense_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, dense code of each entry).

    All-integer ids sort by value, others as text."""
    uniques, codes = np.unique(ids, return_inverse=True)
    try:
        values = uniques.astype(np.int64)
    except ValueError:
        return uniques, codes
    order = np.argsort(values, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[codes]


def build_dataset(name: str, log: EventLog, min_count: int = 5) -> tuple[Dataset, dict]:
    """k-core filter, per-user time order (ties in file order), leave-one-out split, dense ids.

    Returns the dataset and a summary of what was removed at each step.
    """
    if min_count < 1:
        raise UserError(f"--min-count {min_count}: expected a positive integer")
    user_uniques, user_codes = np.unique(log.users, return_inverse=True)
    item_uniques, item_codes = np.unique(log.items, return_inverse=True)
    keep, passes = k_core(user_codes, item_codes, min_count)
    if not keep.any():
        raise UserError(
            f"{log.source}: the {min_count}-core filter removed every event "
            f"({len(keep)} events); lower --min-count"
        )
    users, items = log.users[keep], log.items[keep]
    times, lines = log.times[keep], log.lines[keep]

    # Users left with too few events for leave-one-out are dropped (only possible for k < 3).
    _, kept_users, user_counts = np.unique(users, return_inverse=True, return_counts=True)
    long_enough = user_counts[kept_users] >= MIN_EVENTS_PER_USER
    short_users = int((user_counts < MIN_EVENTS_PER_USER).sum())
    if not long_enough.any():
        raise UserError(
            f"{log.source}: no user has {MIN_EVENTS_PER_USER} or more events after filtering"
        )
    users, items = users[long_enough], items[long_enough]
    times, lines = times[long_enough], lines[long_enough]

    user_ids, user_index = dense_ids(users)
    item_ids, item_index = dense_ids(items)
    order = np.lexsort((lines, times, user_index))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_index, minlength=len(user_ids)), out=offsets[1:])
    dataset = from_full_sequences(
        name, item_index[order], offsets, len(item_ids), user_ids, item_ids
    )
    summary = {
        "events_read": len(log.users),
        "k_core": {
            "min_count": min_count,
            "passes": passes,
            "events_removed": int((~keep).sum()),
            "users_removed": len(user_uniques) - len(np.unique(user_codes[keep])),
            "items_removed": len(item_uniques) - len(np.unique(item_codes[keep])),
        },
        "users_dropped_too_short": short_users,
        "events_dropped_too_short": int((~long_enough).sum()),
        **dataset.statistics(),
    }
    return dataset, summary
