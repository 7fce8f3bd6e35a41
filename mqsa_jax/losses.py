"""Losses (reference, section Losses), computed without dense N-wide arrays.

- Recommendation: ``CE_t = logaddexp(lse(s_t E^T), 0) - s_t . E[target_t]``, the ``0`` being the
  padding column's fixed logit, which the release keeps in the softmax.
- TED: ``-sum_j y_ij log(p_ij + 1e-24)``.  The teacher row ``y_i`` (a softmax of the normalised
  transition counts) is uniform except at the observed successors of ``i``, so
  ``y_ij = uniform_i + extra_ij`` with ``extra`` sparse, and the loss is
  ``-(uniform_i * sum_j log(p_ij + 1e-24) + sum_{observed j} extra_ij log(p_ij + 1e-24))``.
  The first sum is ``sum_j z_ij - N lse_i`` (one product with the table's column sum) plus the
  clamp's correction, which only matters, and is only computed, when some ``p_ij`` falls below
  about 1e-15 (:func:`mqsa_jax.blocked.catalogue_sums`).  The second is taken exactly, at the
  batch's packed (row, successor) pairs.  The 1e-24 is kept: once the student gives an item a
  probability below ~1e-20 it changes both the loss and its gradient (the release's clamp stops
  pushing such items up).

The recommendation and distillation rows share one blocked log-sum-exp over the catalogue
(:mod:`mqsa_jax.blocked`): no ``[rows, N]`` array is written to memory.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax import blocked
from mqsa_jax.data.arrays import Transitions
from mqsa_jax.dropout import dropout as apply_dropout
from mqsa_jax.model import scale_embeddings
from mqsa_jax.tables import lookup_rows, real_rows, table_slices


@flax.struct.dataclass
class TeacherRows:
    """The teacher rows of a batch's packed positions: each row's uniform weight, and its
    observed successors as (row, item, extra) pairs packed in row order (``extra`` 0 past the
    batch's pairs)."""

    uniform: jax.Array  # [C]
    pair_rows: jax.Array  # [P], sorted
    pair_items: jax.Array  # [P]
    pair_extra: jax.Array  # [P]


@flax.struct.dataclass
class TeacherWeights:
    """Teacher rows in CSR form: ``y_ij = uniform_i``, plus ``extra_k`` at ``j = tails[k]`` for
    ``k`` in ``indptr[i]:indptr[i + 1]``.

    Host-computed once per dataset (they depend only on ``A`` and ``tau``); a pytree, so
    ``jax.device_put`` moves it to the device whole.
    """

    uniform: np.ndarray  # [N]
    indptr: np.ndarray  # [N + 1]
    tails: np.ndarray  # [nnz]
    extra: np.ndarray  # [nnz]

    @classmethod
    def from_transitions(cls, transitions: Transitions, tau: float) -> TeacherWeights:
        n = transitions.num_items
        lengths = transitions.row_lengths
        heads = np.repeat(np.arange(n), lengths)
        row_max = transitions.row_max
        scaled = transitions.counts / np.maximum(row_max[heads], 1e-24)  # A_ij / max_j A_ij
        # Softmax of scaled / tau, shifted by each row's maximum (1, or 0 for empty rows).
        shift = (lengths > 0).astype(np.float64)
        observed = np.exp((scaled - shift[heads]) / tau)
        background = np.exp(-shift / tau)
        norm = background * n + np.bincount(heads, observed - background[heads], minlength=n)
        return cls(
            uniform=(background / norm).astype(np.float32),
            indptr=transitions.indptr.astype(np.int32),
            tails=transitions.indices.astype(np.int32),
            extra=((observed - background[heads]) / norm[heads]).astype(np.float32),
        )

    def dense(self) -> np.ndarray:
        """The full teacher matrix, for tests on small catalogues."""
        n = len(self.uniform)
        y = np.repeat(self.uniform[:, None], n, axis=1)
        heads = np.repeat(np.arange(n), np.diff(self.indptr))
        np.add.at(y, (heads, self.tails), self.extra)
        return y

    @property
    def successor_counts(self) -> np.ndarray:
        """[N] observed successors of each item (host-side, for packing)."""
        return np.diff(np.asarray(self.indptr))

    def rows(self, heads: jax.Array, weights: jax.Array, pair_capacity: int) -> TeacherRows:
        """The teacher rows of a batch's packed positions.

        Args:
          heads: [C] the positions' input items.
          weights: [C] 1 at a real position, 0 at packing (which gets no pairs).
          pair_capacity: P, the pair slots; they must hold every real position's successors
            (:class:`mqsa_jax.packing.Packing` sizes them).

        Returns:
          :class:`TeacherRows`: ``uniform`` [C], and ``pair_rows``, ``pair_items``,
          ``pair_extra`` [P].
        """
        start = self.indptr[heads]
        length = jnp.where(weights > 0, self.indptr[heads + 1] - start, 0)
        ends = jnp.cumsum(length)
        slot = jnp.arange(pair_capacity)
        row = jnp.minimum(jnp.searchsorted(ends, slot, side="right"), len(heads) - 1)
        present = slot < ends[-1]
        index = jnp.where(present, start[row] + slot - (ends[row] - length[row]), 0)
        return TeacherRows(uniform=self.uniform[heads], pair_rows=row.astype(jnp.int32),
                           pair_items=self.tails[index],
                           pair_extra=jnp.where(present, self.extra[index], 0.0))


def ted_students(head_rows: jax.Array, key: jax.Array, dropout: float, tau: float) -> jax.Array:
    """The student rows of TED: ``dropout(E[head] * sqrt(d)) / tau``, as in the release.

    Args:
      head_rows: [C, d] the item table's rows at the positions' input items.
      key: the dropout key.

    Returns:
      [C, d].
    """
    return apply_dropout(scale_embeddings(head_rows), key, dropout) / tau


def fused_losses(
    states: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    table: jax.Array,
    students: jax.Array | None = None,
    teacher: TeacherRows | None = None,
    block: int = 0,
    *,
    num_items: int | None = None,
    catalogue_slices: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean recommendation and TED losses over packed rows with ``weights`` 1 (real) or 0.

    On a mesh that splits the table's rows (:mod:`mqsa_jax.tables`), each device scans and
    reads its own slice.

    Args:
      states: [C, d] fused states at positions with a real target.
      targets: [C] their target items.
      weights: [C] 1 for a real position, 0 for packing.
      table: [R, d] the item table: the N items, then padding rows (none on one device).
      students: [C, d] :func:`ted_students` of the same positions' input items, or None: then
        the TED loss is 0.
      teacher: their :meth:`TeacherWeights.rows`.
      block: items per block of the catalogue scan, over all slices (0: the default).
      num_items: N (None: R, no padding rows).
      catalogue_slices: the table's row slices (None: as the current mesh splits it).

    Returns:
      The recommendation loss and the TED loss, scalars.
    """
    rows = states if students is None else jnp.concatenate([states, students])
    num_items = len(table) if num_items is None else num_items
    slices = table_slices() if catalogue_slices is None else catalogue_slices
    block = -(-block // slices) if block else blocked.DEFAULT_BLOCK
    lse, correction = blocked.catalogue_sums(rows, table, len(states), num_items, block, slices)
    count = jnp.maximum(weights.sum(), 1.0)
    target_logits = jnp.sum(states * lookup_rows(table, targets, num_items, batch_split=False),
                            axis=-1)
    rec = jnp.logaddexp(lse[: len(states)], 0.0) - target_logits
    rec_loss = jnp.sum(rec * weights) / count
    if students is None:
        return rec_loss, jnp.zeros((), rec_loss.dtype)
    student_lse = lse[len(states):]
    # sum_j log(p_j + 1e-24) = sum_j z_j - N lse + the clamp's correction, over the N items
    # (the padding rows are zero, but summing them would give them a gradient; masked, not
    # sliced, so that each device sums its own rows).
    items = table
    if num_items < len(table):
        items = jnp.where(real_rows(len(table), num_items)[:, None], table, 0.0)
    item_sum = items.sum(axis=0)
    log_sum = students @ item_sum - num_items * student_lse + correction
    kd = -(teacher.uniform * log_sum + _observed_log_probs(students, table, student_lse, teacher))
    return rec_loss, jnp.sum(kd * weights) / count


def _observed_log_probs(students, table, student_lse, teacher: TeacherRows) -> jax.Array:
    """[C]: ``sum_k extra_ik log(p_i,succ_k + 1e-24)`` over each row's packed pairs."""
    successors = lookup_rows(table, teacher.pair_items, batch_split=False)
    logits = jnp.sum(students[teacher.pair_rows] * successors, axis=-1)
    log_probs = jnp.log(jnp.exp(logits - student_lse[teacher.pair_rows]) + blocked.LOG_EPSILON)
    return jax.ops.segment_sum(teacher.pair_extra * log_probs, teacher.pair_rows,
                               num_segments=len(students), indices_are_sorted=True)


def l2_penalty(params) -> jax.Array:
    """``sum(v^2) / 2`` over every trainable array (tf.nn.l2_loss over all of them).

    Args:
      params: the model's parameter tree.

    Returns:
      A scalar.
    """
    return sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(params)) / 2
