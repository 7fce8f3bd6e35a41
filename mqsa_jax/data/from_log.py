"""A dataset from an event log: the k-core filter, dense ids, and the split.

The split is leave-one-out (the paper's: each user's last two events are its valid and test
targets) or temporal (:func:`temporal_dataset`: a global time cut).  Pure NumPy, every step
vectorised.
"""

from __future__ import annotations

import datetime

import numpy as np

from mqsa_jax.data.dataset import NO_TARGET, TEMPORAL, Dataset, from_full_sequences
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


def dense_map(names: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dense_ids` of ``names[codes]`` without spelling out an id per entry: (the sorted
    ids that occur, the dense id of each code [len(names)], -1 for codes that do not occur)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(names)))
    uniques, rank = dense_ids(names[present])
    lookup = np.full(len(names), -1, np.int32)  # int32: 4 bytes an event once applied
    lookup[present] = rank
    return uniques, lookup


def dense_codes(names: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted ids of ``names[codes]`` that occur, each entry's dense code)."""
    uniques, lookup = dense_map(names, codes)
    return uniques, lookup[codes]


def _offsets(user_index: np.ndarray, num_users: int) -> np.ndarray:
    """[U + 1] where each user's events start in a user-sorted list of ``user_index``."""
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_index, minlength=num_users), out=offsets[1:])
    return offsets


def _k_core_summary(log: EventLog, min_count: int, passes: int, events: int,
                    user_counts: np.ndarray, items: np.ndarray) -> dict:
    """What the k-core filter removed from ``events`` of the log, given the events of each user
    it kept (``user_counts``, by user code) and the items of the events it kept."""
    kept_items = int(np.count_nonzero(np.bincount(items, minlength=1)))
    return {"min_count": min_count, "passes": passes,
            "events_removed": events - int(user_counts.sum()),
            "users_removed": len(log.user_ids) - int(np.count_nonzero(user_counts)),
            "items_removed": len(log.item_ids) - kept_items}


def _filtered(log: EventLog, min_count: int,
              events: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Mask over the log of the events (of the mask ``events``; None: all) that the
    ``min_count``-core filter keeps, and its passes; a user error where it keeps nothing."""
    if min_count < 1:
        raise UserError(f"--min-count {min_count}: expected a positive integer")
    users, items = (log.users, log.items) if events is None else (log.users[events],
                                                                  log.items[events])
    kept, passes = k_core(users, items, min_count)
    if not kept.any():
        raise UserError(f"{log.source}: the {min_count}-core filter removed every event "
                        f"({len(kept)} events); lower --min-count")
    if events is None:
        return kept, passes
    keep = np.zeros(len(log.users), bool)
    keep[np.flatnonzero(events)[kept]] = True
    return keep, passes


def _catalogue(log: EventLog, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dense_map` of the items left; ranking needs two."""
    item_ids, lookup = dense_map(log.item_ids, items)
    if len(item_ids) < 2:
        raise UserError(f"{log.source}: {len(item_ids)} item left after filtering "
                        f"({str(item_ids[0])!r}); ranking needs at least 2")
    return item_ids, lookup


def build_dataset(name: str, log: EventLog, min_count: int = 5,
                  cutoff: str | None = None) -> tuple[Dataset, dict]:
    """k-core filter, per-user time order (ties in file order), the split, dense ids.

    Every step runs on the log's integer columns.

    Args:
      name: the dataset's name.
      log: the events.
      min_count: k of the k-core filter.
      cutoff: None for leave-one-out; else a temporal split at this time
        (:func:`parse_cutoff`, :func:`temporal_dataset`).

    Returns:
      The dataset and a summary of what was removed at each step.
    """
    if cutoff is not None:
        return temporal_dataset(name, log, min_count, parse_cutoff(cutoff, log))
    keep, passes = _filtered(log, min_count)
    users, items = log.users[keep], log.items[keep]
    # Users left with too few events for leave-one-out are dropped (only possible for k < 3).
    user_counts = np.bincount(users, minlength=len(log.user_ids))
    long_enough = user_counts[users] >= MIN_EVENTS_PER_USER
    short_users = int(((user_counts > 0) & (user_counts < MIN_EVENTS_PER_USER)).sum())
    if not long_enough.any():
        raise UserError(
            f"{log.source}: no user has {MIN_EVENTS_PER_USER} or more events after filtering"
        )
    summary = {"events_read": len(log.users),
               "k_core": _k_core_summary(log, min_count, passes, len(keep), user_counts, items)}
    users, items = users[long_enough], items[long_enough]
    user_ids, user_index = dense_codes(log.user_ids, users)
    item_ids, item_lookup = _catalogue(log, items)
    # stable: ties keep the file's order
    order = np.lexsort((log.times[keep][long_enough], user_index))
    dataset = from_full_sequences(name, item_lookup[items][order],
                                  _offsets(user_index, len(user_ids)), len(item_ids), user_ids,
                                  item_ids)
    return dataset, {**summary, "users_dropped_too_short": short_users,
                     "events_dropped_too_short": int((~long_enough).sum()),
                     **dataset.statistics()}


def parse_cutoff(text: str, log: EventLog) -> float:
    """``--cutoff``: a time in the log's unit, a share of its time range (``80%``), or an ISO
    date or date-time (UTC unless it names a zone) for a log of Unix seconds; it must leave
    events on both sides."""
    first, last = float(log.times.min()), float(log.times.max())
    try:
        if text.endswith("%"):
            cutoff = first + float(text[:-1]) / 100 * (last - first)
        else:
            try:
                cutoff = float(text)
            except ValueError:
                when = datetime.datetime.fromisoformat(text)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.UTC)
                cutoff = when.timestamp()
    except ValueError:
        raise UserError(f"--cutoff {text}: expected a time, a percentage of the log's time "
                        "range (80%) or an ISO date (2014-06-01)") from None
    if not first < cutoff <= last:
        raise UserError(f"--cutoff {text}: outside the log's time range ({first:g} to {last:g})"
                        "; events must fall on both sides of it")
    return cutoff


def temporal_dataset(name: str, log: EventLog, min_count: int,
                     cutoff: float) -> tuple[Dataset, dict]:
    """A global temporal split: events before ``cutoff`` train (the k-core filter runs on
    them alone); each training user's first event at or after it whose item the training part
    knows is its valid target, the next such event its test target.  Users with none are
    training-only (no target, :data:`NO_TARGET`); users with no training event are dropped.
    """
    before = log.times < cutoff
    events_before = int(before.sum())
    keep, passes = _filtered(log, min_count, before)
    users, items = log.users[keep], log.items[keep]
    user_ids, user_lookup = dense_map(log.user_ids, users)
    item_ids, item_lookup = _catalogue(log, items)
    user_index = user_lookup[users]
    order = np.lexsort((log.times[keep], user_index))  # stable: ties keep the file's order
    offsets = _offsets(user_index, len(user_ids))

    # Later events of known users and items, by user then time; each user's first two count.
    later = np.flatnonzero(~before)
    users_later = user_lookup[log.users[later]]
    known = (users_later >= 0) & (item_lookup[log.items[later]] >= 0)
    usable, users_later = later[known], users_later[known]
    by_user = np.lexsort((log.times[usable], users_later))
    usable, users_later = usable[by_user], users_later[by_user]
    starts = np.flatnonzero(np.r_[True, users_later[1:] != users_later[:-1]])
    rank = np.arange(len(usable)) - np.repeat(starts, np.diff(np.r_[starts, len(usable)]))
    targets = []
    for position in (0, 1):
        labels = np.full(len(user_ids), NO_TARGET, np.int32)
        at = rank == position
        labels[users_later[at]] = item_lookup[log.items[usable[at]]]
        targets.append(labels)
    valid, test = targets
    if not (test >= 0).any():
        some = "an event" if not (valid >= 0).any() else "two events"
        raise UserError(f"{log.source}: no training user has {some} after the cutoff "
                        f"({cutoff:g}) of an item the training part knows; choose an earlier "
                        "--cutoff")
    dataset = Dataset(name=name, train_items=item_lookup[items][order],
                      train_offsets=offsets, valid=valid, test=test, num_items=len(item_ids),
                      user_ids=user_ids, item_ids=item_ids,
                      split={"kind": TEMPORAL, "cutoff": cutoff})
    return dataset, {
        "events_read": len(log.users),
        "events_before_cutoff": events_before,
        "k_core": _k_core_summary(log, min_count, passes, events_before,
                                  np.bincount(users, minlength=len(log.user_ids)), items),
        "events_after_cutoff": len(later),
        "events_after_cutoff_used": int((valid >= 0).sum() + (test >= 0).sum()),
        "users_with_valid": int((valid >= 0).sum()), "users_with_test": int((test >= 0).sum()),
        "training_only_users": int((valid < 0).sum()),
        **dataset.statistics()}
