"""TED's teacher: its rows in sparse form, and the loss terms at their observed successors.

The teacher row of item ``i`` is ``y_ij = uniform_i + extra_ij``, ``extra`` nonzero only at the
observed successors of ``i`` (:class:`TeacherWeights`).  The distillation loss needs, per student
row ``s`` with input item ``h``, the observed part ``sum_j extra_hj log(p_j + 1e-24)``, written as

    s . W_h  -  lse * sum_j extra_hj  +  sum_j extra_hj softplus(log 1e-24 - log p_j)

with ``W_h = sum_j extra_hj E_j``: a mean successor embedding per distinct input item, and the
clamp's part, which is below float32 resolution unless some ``p_j`` falls under about 1e-15
(:func:`mqsa_jax.blocked.catalogue_sums` tells which rows: their correction is nonzero).

Why not the (row, successor) pairs themselves: a popular item of a large log has tens of
thousands of observed successors, and a batch's rows times those is far more than any buffer
should hold (185 million pairs, 47 GB as ``[pairs, d]``, on a 10^7-event log with 131,695 items).
Here the successors are visited in chunks of :data:`PAIR_CHUNK` pairs inside loops with their own
gradients (custom VJPs), so memory is ``[PAIR_CHUNK, d]`` and ``[distinct heads, d]`` whatever the
teacher's density, and the work is the distinct heads' successors, not every row's.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.blocked import LOG_EPSILON
from mqsa_jax.data.arrays import Transitions
from mqsa_jax.dropout import dropout as apply_dropout
from mqsa_jax.model import scale_embeddings
from mqsa_jax.tables import add_rows, lookup_rows

# (row, successor) pairs visited at once: [PAIR_CHUNK, d] floats live at a time (4 MiB at
# d = 64), and a beauty batch's distinct heads need one or two chunks.
PAIR_CHUNK = 16384


@flax.struct.dataclass
class TeacherWeights:
    """Teacher rows in CSR form: ``y_ij = uniform_i``, plus ``extra_k`` at ``j = tails[k]`` for
    ``k`` in ``indptr[i]:indptr[i + 1]``.

    Host-computed once per dataset (they depend only on ``A`` and ``tau``); a pytree, so
    ``jax.device_put`` moves it to the device whole.
    """

    uniform: np.ndarray  # [N]
    extra_sum: np.ndarray  # [N] sum_j extra_ij
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
        extra = (observed - background[heads]) / norm[heads]
        return cls(
            uniform=(background / norm).astype(np.float32),
            extra_sum=np.bincount(heads, extra, minlength=n).astype(np.float32),
            indptr=transitions.indptr.astype(np.int32),
            tails=transitions.indices.astype(np.int32),
            extra=extra.astype(np.float32),
        )

    @property
    def num_items(self) -> int:
        return len(self.uniform)

    def dense(self) -> np.ndarray:
        """The full teacher matrix, for tests on small catalogues."""
        n = self.num_items
        y = np.repeat(self.uniform[:, None], n, axis=1)
        heads = np.repeat(np.arange(n), np.diff(self.indptr))
        np.add.at(y, (heads, self.tails), self.extra)
        return y

    def rows(self, heads: jax.Array, weights: jax.Array) -> TeacherRows:
        """The teacher rows of a batch's packed positions.

        Args:
          heads: [C] the positions' input items.
          weights: [C] 1 at a real position, 0 at packing (which gets no successors).

        Returns:
          :class:`TeacherRows` of the C positions.
        """
        n = self.num_items
        heads = jnp.where(weights > 0, heads, n)  # n: no successors
        distinct, inverse = jnp.unique(heads, size=len(heads), fill_value=n, return_inverse=True)
        return TeacherRows(uniform=self.uniform[jnp.minimum(heads, n - 1)],
                           extra_sum=jnp.where(heads < n, self.extra_sum[jnp.minimum(heads, n - 1)],
                                               0.0),
                           heads=heads, distinct=distinct, inverse=inverse.reshape(-1),
                           weights=self)


@flax.struct.dataclass
class TeacherRows:
    """The teacher rows of a batch's packed positions (:meth:`TeacherWeights.rows`)."""

    uniform: jax.Array  # [C] uniform_h
    extra_sum: jax.Array  # [C] sum_j extra_hj (0 at packing)
    heads: jax.Array  # [C] input items, N at packing
    distinct: jax.Array  # [C] the distinct heads, N past them
    inverse: jax.Array  # [C] each position's index into ``distinct``
    weights: TeacherWeights

    def observed_log_probs(self, students: jax.Array, lse: jax.Array, table: jax.Array,
                           clamped: jax.Array) -> jax.Array:
        """Per row, ``sum_j extra_hj log(p_j + 1e-24)`` over its head's observed successors.

        Args:
          students: [C, d] the student rows; ``p = softmax(students @ E[:N].T)``.
          lse: [C] their log-sum-exp over the N items.
          table: [R, d] the item table (R >= N).
          clamped: [C] bool, the rows with some ``p_j`` below about 1e-15: only there is the
            clamp's part above float32 resolution, and computed.

        Returns:
          [C].
        """
        means = successor_means(table, self.distinct, self.weights)[self.inverse]
        clamp = clamp_at_successors(students, lse, table,
                                    jnp.where(clamped, self.heads, self.weights.num_items),
                                    self.weights)
        return jnp.sum(students * means, axis=-1) - self.extra_sum * lse + clamp


def ted_students(head_rows: jax.Array, key: jax.Array, dropout: float, tau: float) -> jax.Array:
    """The student rows of TED: ``dropout(E[head] * sqrt(d)) / tau``, as in the release.

    Args:
      head_rows: [C, d] the item table's rows at the positions' input items.
      key: the dropout key.

    Returns:
      [C, d].
    """
    return apply_dropout(scale_embeddings(head_rows), key, dropout) / tau


# --- The successors of a set of rows, chunk by chunk ------------------------------------------


def _successor_ranges(heads: jax.Array, teacher: TeacherWeights):
    """Each row's first successor's index and count (0 for heads of N and up), and the running
    total of counts."""
    n = teacher.num_items
    real = heads < n
    safe = jnp.minimum(heads, n - 1)
    start = teacher.indptr[safe]
    count = jnp.where(real, teacher.indptr[safe + 1] - start, 0)
    return start, count, jnp.cumsum(count)


def _chunk(chunk: jax.Array, start, count, ends, teacher: TeacherWeights):
    """The ``chunk``-th :data:`PAIR_CHUNK` pairs of the rows: each pair's row, successor item
    and extra weight (0 past the last pair)."""
    slot = chunk * PAIR_CHUNK + jnp.arange(PAIR_CHUNK)
    row = jnp.minimum(jnp.searchsorted(ends, slot, side="right"), len(ends) - 1)
    present = slot < ends[-1]
    index = jnp.where(present, start[row] + slot - (ends[row] - count[row]), 0)
    return row, teacher.tails[index], jnp.where(present, teacher.extra[index], 0.0)


def _over_successors(heads: jax.Array, teacher: TeacherWeights, body, init):
    """``carry = body(carry, row, item, extra)`` over every chunk of the rows' pairs."""
    start, count, ends = _successor_ranges(heads, teacher)
    chunks = (ends[-1] + PAIR_CHUNK - 1) // PAIR_CHUNK

    def step(chunk, carry):
        return body(carry, *_chunk(chunk, start, count, ends, teacher))

    return jax.lax.fori_loop(0, chunks, step, init)


@jax.custom_vjp
def successor_means(table: jax.Array, heads: jax.Array, teacher: TeacherWeights) -> jax.Array:
    """``W_h = sum_j extra_hj E_j`` for each of ``heads`` [H] (0 for N and up): [H, d]."""
    def body(total, row, item, extra):
        rows = lookup_rows(table, item, batch_split=False) * extra[:, None]
        return total.at[row].add(rows, indices_are_sorted=True)

    return _over_successors(heads, teacher, body, jnp.zeros((len(heads), table.shape[1]),
                                                            table.dtype))


def _successor_means_fwd(table, heads, teacher):
    return successor_means(table, heads, teacher), (table, heads, teacher)


def _successor_means_bwd(residuals, g):
    table, heads, teacher = residuals

    def body(d_table, row, item, extra):
        return add_rows(d_table, item, g[row] * extra[:, None])

    return _over_successors(heads, teacher, body, jnp.zeros_like(table)), None, None


successor_means.defvjp(_successor_means_fwd, _successor_means_bwd)


def _pair_clamp_terms(students, lse, table, row, item):
    """At pairs ``(row, item)``: the successor's rows, ``x = log 1e-24 - log p``, and e^-|x|."""
    successors = lookup_rows(table, item, batch_split=False)
    x = jnp.log(LOG_EPSILON) - (jnp.sum(students[row] * successors, axis=-1) - lse[row])
    return successors, x, jnp.exp(-jnp.abs(x))


@jax.custom_vjp
def clamp_at_successors(students: jax.Array, lse: jax.Array, table: jax.Array, heads: jax.Array,
                        teacher: TeacherWeights) -> jax.Array:
    """Per row, ``sum_j extra_hj softplus(log 1e-24 - log p_j)`` over its head's successors
    (0 for heads of N and up): the clamp's part of the observed log-probabilities, [C]."""
    def body(total, row, item, extra):
        _, x, small = _pair_clamp_terms(students, lse, table, row, item)
        softplus = jnp.maximum(x, 0.0) + jnp.log1p(small)
        return total.at[row].add(extra * softplus, indices_are_sorted=True)

    return _over_successors(heads, teacher, body, jnp.zeros_like(lse))


def _clamp_fwd(students, lse, table, heads, teacher):
    return (clamp_at_successors(students, lse, table, heads, teacher),
            (students, lse, table, heads, teacher))


def _clamp_bwd(residuals, g):
    students, lse, table, heads, teacher = residuals

    def body(carry, row, item, extra):
        d_students, d_lse, d_table = carry
        successors, x, small = _pair_clamp_terms(students, lse, table, row, item)
        sigmoid = jnp.where(x >= 0, 1.0, small) / (1.0 + small)
        weight = g[row] * extra * sigmoid  # d/dx; dx/dz = -1, dx/dlse = 1
        return (d_students.at[row].add(-weight[:, None] * successors, indices_are_sorted=True),
                d_lse.at[row].add(weight, indices_are_sorted=True),
                add_rows(d_table, item, -weight[:, None] * students[row]))

    init = (jnp.zeros_like(students), jnp.zeros_like(lse), jnp.zeros_like(table))
    d_students, d_lse, d_table = _over_successors(heads, teacher, body, init)
    return d_students, d_lse, d_table, None, None


clamp_at_successors.defvjp(_clamp_fwd, _clamp_bwd)
