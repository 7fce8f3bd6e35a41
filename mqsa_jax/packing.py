"""Host-side packing of training batches into a few static shapes.

A batch is the release's: 256 users in the shuffled order.  What the step computes on is packed:

- **Rows.** Within a batch, users are sorted by length; the short rows run on their last
  ``short_width`` columns and only the ``long_rows`` longest at full width.  A real position's
  state depends only on the real items up to it, so this is exact.
- **Targets.** Only positions with a real target reach the N-wide products, packed into a
  buffer of ``capacity`` rows (a multiple of 256, so an epoch compiles a handful of shapes).
- **Teacher pairs.** TED's observed successors of those positions' items, packed into
  ``pair_capacity`` (row, item) pairs: a fixed multiple of ``capacity`` per dataset, so they add
  no shapes of their own (a larger size is used for the rare batch that needs it).

The static sizes travel with the batch (:class:`Batch`'s non-pytree fields), so each distinct
combination is one compiled step.
"""

from __future__ import annotations

from collections.abc import Iterator

import flax.struct
import jax
import numpy as np

# Packed-row buffers are rounded up to a multiple of this, so an epoch compiles a handful of
# shapes while wasting at most this many rows per step.
CAPACITY_QUANTUM = 256
# Likewise for the number of rows a batch runs at full width.
LONG_ROWS_QUANTUM = 16
SHORT_WIDTH_CHOICES = (4, 8, 12, 16, 24, 32)
# Teacher pairs get this much headroom over the dataset's mean pairs per target, so that nearly
# every batch fits ``capacity * ratio`` pairs.
PAIR_HEADROOM = 1.15


@flax.struct.dataclass
class Batch:
    """One training batch: its users (sorted by length, the ``long_rows`` longest last) and the
    static sizes of its packing."""

    users: jax.Array  # [batch_size] int32; the all-padding row fills a partial batch
    capacity: int = flax.struct.field(pytree_node=False)
    long_rows: int = flax.struct.field(pytree_node=False)
    short_width: int = flax.struct.field(pytree_node=False)
    pair_capacity: int = flax.struct.field(pytree_node=False)


def round_up(value: int, quantum: int) -> int:
    return -(-value // quantum) * quantum


def split_rows(rows: jax.Array, long_rows: int, short_width: int) -> list[jax.Array]:
    """A batch sorted by length -> its short rows' last ``short_width`` columns and its
    ``long_rows`` longest rows at full width (either group left out when empty)."""
    split = rows.shape[0] - long_rows
    return ([rows[:split, -short_width:]] if split else []) + ([rows[split:]] if long_rows else [])


def choose_short_width(targets_per_user: np.ndarray, max_len: int, batch_size: int) -> int:
    """The width that minimises the expected rows x columns a batch runs."""
    def cost(width):
        long_rows = batch_size * np.mean(targets_per_user > width)
        return batch_size * width + round_up(int(np.ceil(long_rows)), LONG_ROWS_QUANTUM) * max_len

    return min((w for w in SHORT_WIDTH_CHOICES if w < max_len), key=cost, default=max_len)


class Packing:
    """Cuts a shuffled order of users into :class:`Batch` es.

    Args:
      targets_per_user: [U] real training targets of each user.
      pairs_per_user: [U] TED teacher pairs of each user: the observed successors of the items
        at its real target positions, summed (zeros when TED is off).
      max_len: the rows' full width.
      batch_size: users per batch.
    """

    def __init__(self, targets_per_user: np.ndarray, pairs_per_user: np.ndarray, max_len: int,
                 batch_size: int):
        self.batch_size = batch_size
        self.targets = np.append(targets_per_user, 0)  # the padding user has nothing
        self.pairs = np.append(pairs_per_user, 0)
        self.short_width = choose_short_width(targets_per_user, max_len, batch_size)
        mean_pairs = self.pairs.sum() / max(self.targets.sum(), 1)
        self.pair_ratio = max(1, int(np.ceil(PAIR_HEADROOM * mean_pairs)))

    def batches(self, order: np.ndarray) -> Iterator[tuple[Batch, int]]:
        """Yields each batch of ``order`` (host arrays) with its number of real targets.

        Users are padded to ``batch_size`` with the padding user and sorted by length within the
        batch (which users share a batch is unchanged), so the longest come last.
        """
        padding_user = len(self.targets) - 1
        for start in range(0, len(order), self.batch_size):
            users = order[start:start + self.batch_size]
            users = np.pad(users, (0, self.batch_size - len(users)), constant_values=padding_user)
            users = users[np.argsort(self.targets[users], kind="stable")]
            count = int(self.targets[users].sum())
            long_count = int((self.targets[users] > self.short_width).sum())
            capacity = max(CAPACITY_QUANTUM, round_up(count, CAPACITY_QUANTUM))
            pairs = int(self.pairs[users].sum())
            pair_capacity = capacity * self.pair_ratio
            if pairs > pair_capacity:
                pair_capacity = round_up(pairs, capacity)
            yield Batch(users=users.astype(np.int32), capacity=capacity,
                        long_rows=min(self.batch_size, round_up(long_count, LONG_ROWS_QUANTUM)),
                        short_width=self.short_width, pair_capacity=pair_capacity), count
