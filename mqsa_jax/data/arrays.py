"""Training and evaluation arrays (reference, section Preprocessing), all vectorised NumPy.

Every array derives from one matrix: each user's training list cut to its last ``max_len``
items, right-aligned and left-padded with the padding id ``num_items``.
"""

from __future__ import annotations

import dataclasses

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

    def to_dense(self) -> np.ndarray:
        """For tests and small catalogues only."""
        dense = np.zeros((self.num_items, self.num_items), dtype=np.float32)
        rows = np.repeat(np.arange(self.num_items), self.row_lengths)
        dense[rows, self.indices] = self.counts
        return dense


@dataclasses.dataclass(frozen=True)
class SequenceData:
    """Per-user rows of length ``max_len``, padding id ``num_items``.

    Histories (items excluded from ranking) are padded id lists, never a users x items matrix:
    validation excludes the cut training list, test excludes it plus the validation item.
    """

    num_items: int
    max_len: int
    train_inputs: np.ndarray  # [U, T]
    train_targets: np.ndarray  # [U, T]
    valid_inputs: np.ndarray  # [U, T]
    valid_labels: np.ndarray  # [U]
    test_inputs: np.ndarray  # [U, T]
    test_labels: np.ndarray  # [U]
    valid_history: np.ndarray  # [U, T]
    test_history: np.ndarray  # [U, T + 1]
    transitions: Transitions

    @property
    def num_users(self) -> int:
        return len(self.valid_labels)

    @property
    def padding_id(self) -> int:
        return self.num_items

    @property
    def num_train_targets(self) -> int:
        return int((self.train_targets != self.num_items).sum())


def right_aligned_tails(values: np.ndarray, offsets: np.ndarray, width: int,
                        pad: int) -> np.ndarray:
    """The last ``width`` items of each ragged row, right-aligned in a ``[rows, width]`` matrix."""
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, width)
    rows = np.repeat(np.arange(len(lengths)), kept)
    starts = offsets[1:] - kept
    # Position of each kept element within its row's kept tail, then its column.
    within = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    columns = width - np.repeat(kept, kept) + within
    matrix = np.full((len(lengths), width), pad, dtype=np.int32)
    matrix[rows, columns] = values[np.repeat(starts, kept) + within]
    return matrix


def pad_to_shape(matrix: np.ndarray, rows: int, width: int, pad: int) -> np.ndarray:
    """``matrix`` [B, W] in the first rows of a ``[rows, width]`` int32 block of ``pad``, its
    columns right-aligned: one static shape for a compiled call (rows >= B, width >= W)."""
    out = np.full((rows, width), pad, np.int32)
    out[:len(matrix), width - matrix.shape[1]:] = matrix
    return out


def transition_counts(cut: np.ndarray, num_items: int, time_span: int = 1) -> Transitions:
    """``A[s[n], s[n+k]] += 1`` for ``k`` in ``1..time_span`` over each right-aligned cut row."""
    heads, tails = [], []
    for span in range(1, min(time_span, cut.shape[1] - 1) + 1):
        head, tail = cut[:, :-span].ravel(), cut[:, span:].ravel()
        real = (head != num_items) & (tail != num_items)
        heads.append(head[real])
        tails.append(tail[real])
    keys = np.concatenate(heads).astype(np.int64) * num_items + np.concatenate(tails)
    pairs, counts = np.unique(keys, return_counts=True)  # sorted by head, then tail
    row_lengths = np.bincount(pairs // num_items, minlength=num_items)
    indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=indptr[1:])
    return Transitions(
        indptr=indptr,
        indices=(pairs % num_items).astype(np.int32),
        counts=counts.astype(np.float32),
        num_items=num_items,
    )


def build_sequence_data(dataset: Dataset, max_len: int = 50, time_span: int = 1) -> SequenceData:
    pad = dataset.num_items
    cut = right_aligned_tails(dataset.train_items, dataset.train_offsets, max_len, pad)
    # Training: input cut[:-1], target cut[1:], both right-aligned.
    train_inputs = np.concatenate([np.full((len(cut), 1), pad, np.int32), cut[:, :-1]], axis=1)
    train_targets = np.where(train_inputs != pad, cut, pad).astype(np.int32)
    # Test input: the last max_len items of cut + [valid].
    valid_column = dataset.valid[:, None].astype(np.int32)
    test_inputs = np.concatenate([cut[:, 1:], valid_column], axis=1)
    return SequenceData(
        num_items=dataset.num_items,
        max_len=max_len,
        train_inputs=train_inputs,
        train_targets=train_targets,
        valid_inputs=cut,
        valid_labels=dataset.valid.astype(np.int32),
        test_inputs=test_inputs,
        test_labels=dataset.test.astype(np.int32),
        valid_history=cut,
        test_history=np.concatenate([cut, valid_column], axis=1),
        transitions=transition_counts(cut, dataset.num_items, time_span),
    )
