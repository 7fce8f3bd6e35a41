"""Losses (reference, section Losses), computed without dense N-wide targets.

- Recommendation: ``CE_t = logaddexp(lse(s_t E^T), 0) - s_t . E[target_t]``, the ``0`` being the
  padding column's fixed logit, which the release keeps in the softmax.
- TED: ``-sum_j y_ij log(p_ij + 1e-24)``.  The teacher row ``y_i`` (a softmax of the normalised
  transition counts) is uniform except at the observed successors of ``i``, so
  ``y_ij = uniform_i + extra_ij`` with ``extra`` sparse, and the loss is
  ``-(uniform_i * sum_j log(p_ij + 1e-24) + sum_{observed j} extra_ij log(p_ij + 1e-24))``:
  a row sum taken in the same pass as the softmax, plus a gather at the observed successors.
  The 1e-24 is kept: once the student gives an item a probability below ~1e-20 it changes both
  the loss and its gradient (the release's clamp stops pushing such items up).

The recommendation and distillation rows share one ``[rows, d] x [d, N]`` matmul.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.chunked import catalogue_sums
from mqsa_jax.data.arrays import Transitions
from mqsa_jax.model import Lookup, lookup_rows

_LOG_EPSILON = 1e-24


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
    max_successors: int = flax.struct.field(pytree_node=False)

    @classmethod
    def from_transitions(cls, transitions: Transitions, tau: float) -> "TeacherWeights":
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
            max_successors=max(int(lengths.max(initial=0)), 1),
        )

    def dense(self) -> np.ndarray:
        """The full teacher matrix, for tests on small catalogues."""
        n = len(self.uniform)
        y = np.repeat(self.uniform[:, None], n, axis=1)
        heads = np.repeat(np.arange(n), np.diff(self.indptr))
        np.add.at(y, (heads, self.tails), self.extra)
        return y

    def rows(self, heads: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """For each head: ``uniform`` [C], successor ids [C, R] and their ``extra`` [C, R]
        (0 past the row's end), R being the longest row of the catalogue."""
        start = self.indptr[heads]
        length = self.indptr[heads + 1] - start
        slot = jnp.arange(self.max_successors)
        present = slot[None, :] < length[:, None]
        index = jnp.where(present, start[:, None] + slot[None, :], 0)
        return self.uniform[heads], self.tails[index], jnp.where(present, self.extra[index], 0.0)


def fused_losses(
    states: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    table: jax.Array,
    students: jax.Array | None = None,
    teacher_rows: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    chunk: int = 0,
    lookup: Lookup = lookup_rows,
    catalogue_slices: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Mean recommendation and TED losses over packed rows with ``weights`` 1 (real) or 0.

    ``states`` [C, d] are the fused states at positions with a real target; ``students`` [C, d]
    are ``dropout(E[head] * sqrt(d)) / tau`` for the same positions' input items, and
    ``teacher_rows`` their :meth:`TeacherWeights.rows`.  Without students the TED loss is 0.
    ``chunk`` > 0 scans the catalogue in chunks of that many items (``mqsa_jax.chunked``)
    instead of building the ``[rows, N]`` logits; on a table split into ``catalogue_slices``
    row slices over devices, each device takes its share of a chunk from its own slice.
    ``lookup`` reads the targets' rows of the table (the partitioner's, so that a table split
    over devices is read where it lives).
    """
    rows = states if students is None else jnp.concatenate([states, students])
    uniform, successors, extra = teacher_rows if students is not None else (None, None, None)
    if chunk:
        if students is None:
            successors, extra = jnp.zeros((0, 1), jnp.int32), jnp.zeros((0, 1), table.dtype)
        # ``chunk`` items per scan step in all: each slice's device takes its share of them.
        rec_lse, log_sum, observed = catalogue_sums(len(states), -(-chunk // catalogue_slices),
                                                    catalogue_slices, rows, table, extra,
                                                    successors)
    else:
        logits = rows @ table.T
        rec_lse = jax.nn.logsumexp(logits[: len(states)], axis=-1)
        if students is not None:
            log_probs = jnp.log(jax.nn.softmax(logits[len(states):], axis=-1) + _LOG_EPSILON)
            log_sum = log_probs.sum(axis=-1)
            observed = jnp.sum(extra * jnp.take_along_axis(log_probs, successors, axis=1), -1)
    count = jnp.maximum(weights.sum(), 1.0)
    target_logits = jnp.sum(states * lookup(table, targets), axis=-1)
    rec = jnp.logaddexp(rec_lse, 0.0) - target_logits
    rec_loss = jnp.sum(rec * weights) / count
    if students is None:
        return rec_loss, jnp.zeros((), rec_loss.dtype)
    kd = -(uniform * log_sum + observed)
    return rec_loss, jnp.sum(kd * weights) / count


def l2_penalty(params) -> jax.Array:
    """``sum(v^2) / 2`` over every trainable array (tf.nn.l2_loss over all of them)."""
    return sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(params)) / 2
