"""Training and evaluation arrays (reference, section Preprocessing), all vectorised NumPy.

Every array derives from one matrix: each user's training list cut to its last ``max_len``
items, right-aligned and left-padded with the padding id ``num_items``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mqsa_jax.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Transitions:
    """Sparse item-to-item transition counts ``A`` in CSR form, rows = head items.

    ``row_max[i]`` is ``max_j A_ij`` (0 for items that never lead anywhere).
    """

    indptr: np.ndarray  # int64 [N + 1]
    indices: np.ndarray  # int32 [nnz]
    counts: np.ndarray  # float32 [nnz]
    num_items: int

    @property
    def row_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def row_max(self) -> np.ndarray:
        result = np.zeros(self.num_items, dtype=np.float32)
        nonempty = self.row_lengths > 0
        result[nonempty] = np.maximum.reduceat(self.counts, self.indptr[:-1][nonempty])
        return result

    @classmethod
    def from_pairs(cls, pairs: np.ndarray, counts: np.ndarray, num_items: int) -> Transitions:
        """From distinct sorted keys ``head * N + tail`` [nnz] and their counts [nnz]."""
        row_lengths = np.bincount(pairs // num_items, minlength=num_items)
        indptr = np.zeros(num_items + 1, dtype=np.int64)
        np.cumsum(row_lengths, out=indptr[1:])
        return cls(indptr=indptr, indices=(pairs % num_items).astype(np.int32),
                   counts=counts.astype(np.float32), num_items=num_items)

    def to_dense(self) -> np.ndarray:
        """For tests and small catalogues only."""
        dense = np.zeros((self.num_items, self.num_items), dtype=np.float32)
        rows = np.repeat(np.arange(self.num_items), self.row_lengths)
        dense[rows, self.indices] = self.counts
        return dense


@dataclasses.dataclass(frozen=True)
class SequenceData:
    """Per-user rows of length ``max_len``, padding id ``num_items``, all derived from one
    matrix: ``cut``, each user's training list cut to its last ``max_len`` items, right-aligned.

    Only ``cut`` and the labels are kept (4 bytes per user and position: 1.4 GB for 7 million
    users at ``max_len`` 50); a batch's training and evaluation rows are made from its users'
    rows of it when asked (:meth:`train_rows`, :meth:`eval_rows`).  Histories (items excluded
    from ranking) are padded id lists, never a users x items matrix: validation excludes the cut
    training list, test excludes it plus the validation item.
    """

    num_items: int
    max_len: int
    cut: np.ndarray  # [U, T] int32
    valid_labels: np.ndarray  # [U]
    test_labels: np.ndarray  # [U]
    transitions: Transitions

    @property
    def num_users(self) -> int:
        return len(self.valid_labels)

    @property
    def padding_id(self) -> int:
        return self.num_items

    @functools.cached_property
    def cut_lengths(self) -> np.ndarray:
        """[U] each user's items in ``cut``."""
        return (self.cut != self.num_items).sum(axis=1)

    @property
    def train_lengths(self) -> np.ndarray:
        """[U] each user's training targets: its cut list's items but the first."""
        return np.maximum(self.cut_lengths - 1, 0)

    @property
    def num_train_targets(self) -> int:
        return int(self.train_lengths.sum())

    def train_rows(self, users: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Training inputs ``cut[:-1]`` and targets ``cut[1:]``, right-aligned: [len(users), T]
        each."""
        cut = self.cut[users]
        inputs = np.concatenate([np.full((len(cut), 1), self.num_items, np.int32), cut[:, :-1]],
                                axis=1)
        return inputs, np.where(inputs != self.num_items, cut, self.num_items).astype(np.int32)

    def eval_rows(self, split: str, users: np.ndarray | slice = slice(None)):
        """A split's inputs [len(users), T], labels [len(users)] and excluded history: the
        validation input is the cut list, the test input its last T - 1 items and the
        validation item; the test history is the cut list and the validation item
        [len(users), T + 1]."""
        cut, valid = self.cut[users], self.valid_labels[users]
        if split == "valid":
            return cut, valid, cut
        column = valid[:, None].astype(np.int32)
        return (np.concatenate([cut[:, 1:], column], axis=1), self.test_labels[users],
                np.concatenate([cut, column], axis=1))


# Users per block of the host-side array work below: its temporaries stay a few hundred MB
# whatever the log (a 10^8-event log's 7 million users in one block peaked at 8.3 GB).
ROWS_PER_BLOCK = 1 << 20


def right_aligned_tails(values: np.ndarray, offsets: np.ndarray, width: int,
                        pad: int) -> np.ndarray:
    """The last ``width`` items of each ragged row, right-aligned in a ``[rows, width]`` matrix
    (filled :data:`ROWS_PER_BLOCK` rows at a time)."""
    matrix = np.full((len(offsets) - 1, width), pad, dtype=np.int32)
    for first in range(0, len(matrix), ROWS_PER_BLOCK):
        block_offsets = offsets[first:first + ROWS_PER_BLOCK + 1]
        kept = np.minimum(np.diff(block_offsets), width)
        rows = np.repeat(np.arange(len(kept)), kept)
        # Position of each kept element within its row's kept tail, then its column.
        within = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
        columns = width - np.repeat(kept, kept) + within
        matrix[first + rows, columns] = values[np.repeat(block_offsets[1:] - kept, kept)
                                               + within]
    return matrix


def pad_to_shape(matrix: np.ndarray, rows: int, width: int, pad: int) -> np.ndarray:
    """``matrix`` [B, W] in the first rows of a ``[rows, width]`` int32 block of ``pad``, its
    columns right-aligned: one static shape for a compiled call (rows >= B, width >= W)."""
    out = np.full((rows, width), pad, np.int32)
    out[:len(matrix), width - matrix.shape[1]:] = matrix
    return out


def transition_counts(cut: np.ndarray, num_items: int, time_span: int = 1) -> Transitions:
    """``A[s[n], s[n+k]] += 1`` for ``k`` in ``1..time_span`` over each right-aligned cut row
    (taken :data:`ROWS_PER_BLOCK` rows at a time, as ``head * N + tail`` keys)."""
    keys = []
    for first in range(0, len(cut), ROWS_PER_BLOCK):
        block = cut[first:first + ROWS_PER_BLOCK]
        for span in range(1, min(time_span, cut.shape[1] - 1) + 1):
            head, tail = block[:, :-span].ravel(), block[:, span:].ravel()
            real = (head != num_items) & (tail != num_items)
            keys.append(head[real].astype(np.int64) * num_items + tail[real])
    keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    return Transitions.from_pairs(*np.unique(keys, return_counts=True), num_items)


def build_sequence_data(dataset: Dataset, max_len: int = 50, time_span: int = 1) -> SequenceData:
    cut = right_aligned_tails(dataset.train_items, dataset.train_offsets, max_len,
                              dataset.num_items)
    return SequenceData(num_items=dataset.num_items, max_len=max_len, cut=cut,
                        valid_labels=dataset.valid.astype(np.int32),
                        test_labels=dataset.test.astype(np.int32),
                        transitions=transition_counts(cut, dataset.num_items, time_span))
