"""Host-side packing of training batches into a few static shapes.

A batch is the release's: 256 users in the shuffled order.  What the step computes on is packed:

- **Rows.** Each user's real positions (a left-padded row holds them in its last columns) are
  laid out as one segment, and segments share rows of the full width ``max_len``, first fit by
  decreasing length: a beauty batch's 256 users (1,450 real positions) fill about 30 rows of 50
  instead of 256.  Attention and the long query's window stay within a segment, and each
  position keeps the position embedding it has in its own left-padded row, so every real
  position's state is the one of the unpacked row.
- **Targets.** Only positions with a real target reach the N-wide products, packed into a
  buffer of ``capacity`` rows (a multiple of 256, so an epoch compiles a handful of shapes).

The static sizes travel with the batch (:class:`Batch`'s non-pytree fields and the number of its
rows), so each distinct combination is one compiled step.
"""

from __future__ import annotations

from collections.abc import Iterator

import flax.struct
import jax
import numpy as np

from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.rounding import ceil_div, round_up

# Packed-target buffers are rounded up to a multiple of this, so an epoch compiles a handful of
# shapes while wasting at most this many rows per step.
CAPACITY_QUANTUM = 256
# Likewise for the number of packed rows.
ROWS_QUANTUM = 8


def target_capacity(targets: int) -> int:
    """The target buffer of a batch with ``targets`` real targets."""
    return max(CAPACITY_QUANTUM, round_up(int(targets), CAPACITY_QUANTUM))


@flax.struct.dataclass
class Batch:
    """One training batch: its users' positions packed into rows of the full width.

    ``segments`` numbers each user's positions (1, 2, ... within the batch; 0 where a row is
    empty) and ``positions`` gives each position's index into the position embedding.
    """

    items: jax.Array  # [R, T] int32 input items, the padding id where empty
    targets: jax.Array  # [R, T] int32 target items, the padding id where empty
    segments: jax.Array  # [R, T] int32
    positions: jax.Array  # [R, T] int32
    capacity: int = flax.struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, int]:
        """The static shape it compiles to: (packed rows, target capacity)."""
        return self.items.shape[0], self.capacity

    def padded(self, rows: int, capacity: int, padding_id: int) -> Batch:
        """The batch (host arrays) with empty rows up to ``rows`` and the target buffer
        ``capacity``: the same batch at a larger shape."""
        def pad(array, fill):
            return np.pad(array, ((0, rows - len(array)), (0, 0)), constant_values=fill)

        return Batch(items=pad(self.items, padding_id), targets=pad(self.targets, padding_id),
                     segments=pad(self.segments, 0), positions=pad(self.positions, 0),
                     capacity=capacity)


def first_fit_rows(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Places segments of ``lengths`` (each at most ``width``) into rows of ``width``, first
    fit by decreasing length.

    Returns:
      Each segment's row and starting column, [len(lengths)] each.
    """
    rows, starts = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
    free: list[int] = []  # room left in each row
    for segment in np.argsort(-lengths, kind="stable"):
        length = int(lengths[segment])
        row = next((r for r, room in enumerate(free) if room >= length), len(free))
        if row == len(free):
            free.append(width)
        rows[segment], starts[segment] = row, width - free[row]
        free[row] -= length
    return rows, starts


class Packing:
    """Cuts a shuffled order of users into :class:`Batch` es.

    Args:
      data: the users' sequences (:class:`mqsa_jax.data.arrays.SequenceData`); a batch's
        training rows are made from them as it is packed.
      batch_size: users per batch.
      data_shards: the packed rows are a multiple of this: the ways the mesh's ``data`` axis
        splits them (within this process's shard).
    """

    def __init__(self, data: SequenceData, batch_size: int, data_shards: int = 1):
        self.data, self.padding_id, self.batch_size = data, data.padding_id, batch_size
        self.lengths = data.train_lengths
        self.row_quantum = np.lcm(ROWS_QUANTUM, data_shards)

    def num_batches(self, users: int) -> int:
        """How many batches an order of ``users`` users makes."""
        return ceil_div(users, self.batch_size)

    def batches(self, order: np.ndarray, first: int = 0,
                stop: int | None = None) -> Iterator[tuple[Batch, int]]:
        """Yields batches ``first`` to ``stop`` (None: the last) of ``order`` (host arrays), each
        with its number of real targets."""
        stop = self.num_batches(len(order)) if stop is None else stop
        for index in range(first, stop):
            yield self.pack(order[index * self.batch_size:(index + 1) * self.batch_size])

    def pack(self, users: np.ndarray) -> tuple[Batch, int]:
        """The batch of ``users`` and its number of real targets."""
        width = self.data.max_len
        lengths = self.lengths[users]
        users, lengths = users[lengths > 0], lengths[lengths > 0]
        inputs, targets = self.data.train_rows(users)
        rows, starts = first_fit_rows(lengths, width)
        num_rows = max(self.row_quantum, round_up(int(rows.max(initial=-1)) + 1,
                                                  self.row_quantum))
        # Segment k's j-th position: column width - length + j of its user's row, column
        # start + j of its packed row.
        segment = np.repeat(np.arange(len(users)), lengths)
        offset = np.arange(len(segment)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = (segment, width - lengths[segment] + offset)
        target = (rows[segment], starts[segment] + offset)
        packed = {name: np.full((num_rows, width), fill, np.int32) for name, fill in (
            ("items", self.padding_id), ("targets", self.padding_id), ("segments", 0),
            ("positions", 0))}
        packed["items"][target] = inputs[source]
        packed["targets"][target] = targets[source]
        packed["segments"][target] = segment + 1
        packed["positions"][target] = source[1]
        count = len(segment)
        return Batch(**packed, capacity=target_capacity(count)), count
