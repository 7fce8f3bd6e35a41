"""Losses (reference, section Losses), computed without dense N-wide arrays.

- Recommendation: ``CE_t = logaddexp(lse(s_t E^T), 0) - s_t . E[target_t]``, the ``0`` being the
  padding column's fixed logit, which the release keeps in the softmax.
- TED: ``-sum_j y_ij log(p_ij + 1e-24)``.  The teacher row ``y_i`` (a softmax of the normalised
  transition counts) is uniform except at the observed successors of ``i``, so
  ``y_ij = uniform_i + extra_ij`` with ``extra`` sparse, and the loss is
  ``-(uniform_i * sum_j log(p_ij + 1e-24) + sum_{observed j} extra_ij log(p_ij + 1e-24))``.
  The first sum is ``sum_j z_ij - N lse_i`` (one product with the table's column sum) plus the
  clamp's correction, which only matters, and is only computed, when some ``p_ij`` falls below
  about 1e-15 (:func:`mqsa_jax.blocked.catalogue_sums`).  The second is taken over the heads'
  successors in chunks (:mod:`mqsa_jax.teacher`), never as ``[rows, successors]`` arrays, with
  the clamp under the same rule.  The 1e-24 is kept: once the student gives an item a
  probability below ~1e-20 it changes both the loss and its gradient (the release's clamp stops
  pushing such items up).

The recommendation and distillation rows share one blocked log-sum-exp over the catalogue
(:mod:`mqsa_jax.blocked`): no ``[rows, N]`` array is written to memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax.typing import VariableDict

from mqsa_jax import blocked
from mqsa_jax.rounding import ceil_div
from mqsa_jax.tables import lookup_rows, real_rows, table_slices
from mqsa_jax.teacher import TeacherRows


def fused_losses(
    states: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    table: jax.Array,
    students: jax.Array | None = None,
    teacher: TeacherRows | None = None,
    item_block: int = 0,
    precision: str = "float32",
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
      item_block: items per block of the catalogue scan, over all slices (0: the default).
      precision: the operand dtype of the catalogue scan's products
        (:data:`mqsa_jax.config.PRECISIONS`; they accumulate in float32).
      num_items: N (None: R, no padding rows).
      catalogue_slices: the table's row slices (None: as the current mesh splits it).

    Returns:
      The recommendation loss and the TED loss, scalars.
    """
    rows = states if students is None else jnp.concatenate([states, students])
    num_items = len(table) if num_items is None else num_items
    slices = table_slices() if catalogue_slices is None else catalogue_slices
    block = ceil_div(item_block, slices) if item_block else blocked.DEFAULT_BLOCK
    lse, correction = blocked.catalogue_sums(rows, table, len(states), num_items, block, slices,
                                             precision)
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
    # The rows whose correction is nonzero are the ones the clamp touches (blocked.py).
    clamped = jax.lax.stop_gradient(correction) > 0
    observed = teacher.observed_log_probs(students, student_lse, table, clamped)
    kd = -(teacher.uniform * log_sum + observed)
    return rec_loss, jnp.sum(kd * weights) / count


def l2_penalty(params: VariableDict) -> jax.Array:
    """``sum(v^2) / 2`` over every trainable array (tf.nn.l2_loss over all of them).

    Args:
      params: the model's parameter tree.

    Returns:
      A scalar.
    """
    return sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(params)) / 2
