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


def dense_codes(names: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dense_ids` of ``names[codes]`` without spelling out an id per entry: (the sorted
    ids that occur, each entry's dense code)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(names)))
    local = np.zeros(len(names), np.int32)
    local[present] = np.arange(len(present))
    uniques, rank = dense_ids(names[present])
    return uniques, rank.astype(np.int32)[local[codes]]  # int32: 4 bytes an event


def build_dataset(name: str, log: EventLog, min_count: int = 5) -> tuple[Dataset, dict]:
    """k-core filter, per-user time order (ties in file order), leave-one-out split, dense ids.

    Every step runs on the log's integer columns.  Returns the dataset and a summary of what
    was removed at each step.
    """
    if min_count < 1:
        raise UserError(f"--min-count {min_count}: expected a positive integer")
    keep, passes = k_core(log.users, log.items, min_count)
    if not keep.any():
        raise UserError(
            f"{log.source}: the {min_count}-core filter removed every event "
            f"({len(keep)} events); lower --min-count"
        )
    users, items, times = log.users[keep], log.items[keep], log.times[keep]
    kept_items = int(np.count_nonzero(np.bincount(items)))

    # Users left with too few events for leave-one-out are dropped (only possible for k < 3).
    user_counts = np.bincount(users, minlength=len(log.user_ids))
    long_enough = user_counts[users] >= MIN_EVENTS_PER_USER
    short_users = int(((user_counts > 0) & (user_counts < MIN_EVENTS_PER_USER)).sum())
    if not long_enough.any():
        raise UserError(
            f"{log.source}: no user has {MIN_EVENTS_PER_USER} or more events after filtering"
        )
    users, items, times = users[long_enough], items[long_enough], times[long_enough]

    user_ids, user_index = dense_codes(log.user_ids, users)
    item_ids, item_index = dense_codes(log.item_ids, items)
    if len(item_ids) < 2:
        raise UserError(f"{log.source}: {len(item_ids)} item left after filtering "
                        f"({str(item_ids[0])!r}); ranking needs at least 2")
    order = np.lexsort((times, user_index))  # stable: ties keep the file's order
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
            "users_removed": len(log.user_ids) - int((user_counts > 0).sum()),
            "items_removed": len(log.item_ids) - kept_items,
        },
        "users_dropped_too_short": short_users,
        "events_dropped_too_short": int((~long_enough).sum()),
        **dataset.statistics(),
    }
    return dataset, summary
