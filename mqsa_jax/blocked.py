"""Catalogue-wide reductions, block by block: no ``[rows, N]`` array is ever written to memory.

Both losses reduce logits ``z = rows @ E^T`` over all N items.  Written plainly, XLA writes the
whole ``[rows, N]`` logits, then reads and writes them again for every elementwise pass (softmax,
``log(p + 1e-24)``, their gradients): on a CPU those passes cost more than the products.  Here the
table is scanned in blocks of about a thousand items, so each block's logits stay in cache, and
the backward pass recomputes them block by block (a custom VJP) instead of keeping them.

:func:`catalogue_sums` gives what both losses need (see :mod:`mqsa_jax.losses`): each row's
``lse = log sum_j exp(z_j)``, and for TED's student rows the release's clamp inside
``log(p + 1e-24)``: ``sum_j log(p_j + 1e-24) - log p_j``.  The clamp matters for a row once the
student gives some item a probability below 1e-15, which starts in the second or third epoch on
beauty; only such rows get one more blocked pass forward and one backward.

On a mesh whose ``model`` axis splits the table by rows, the table is viewed as ``slices`` row
slices; every block holds one block of each slice, each read on the device that holds it, and
partial results stay per slice until the end, so no collective runs inside the scans.  Padding
rows at the table's end (:func:`mqsa_jax.tables.padded_rows`) have logits -inf: no sum, no gradient.
The blocks and their products, in float32 or bfloat16 operands, are :mod:`mqsa_jax.item_blocks`'.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from mqsa_jax.item_blocks import Block, backward_products, materialized_transpose, scan_blocks

# The release's clamp: TED takes log(p + 1e-24).
LOG_EPSILON = 1e-24
# Items per block when the config leaves it open: beauty epochs ran 3-5% faster than with 512
# (experiments/results/bench.md), and rows x 1024 floats stay small on any accelerator.
DEFAULT_BLOCK = 1024
# Below this log-probability the clamp moves a log by more than float32 resolution allows to
# ignore: log(p + eps) - log(p) < eps / p = 1e-9 for p above 1e-15.
_CLAMP_FREE_LOG_PROB = math.log(LOG_EPSILON) + math.log(1e9)
# The clamp's pass runs on the rows that need it, gathered into the smallest of these shares of
# the student rows (1/64, 1/8, 1/4) that holds them, or on every row when more need it.  On
# beauty 4-7% of the rows needed it around epoch 5 and 0.04% at epoch 150: a pass costs in
# proportion to its buffer, so small buffers serve most steps.
_GATHER_DIVISORS = (64, 8, 4)
# A row's sum of exp(z - shift) below e^-30 may have lost terms to underflow: the step then
# takes the running-maximum pass (_online_lse) for it.
_SUM_FLOOR = 30.0


def _forward_lse(rows, table, num_rec, block, slices, valid, precision):
    """Per row, the log-sum-exp, and per student row (after the first ``num_rec``) the
    smallest logit, in one pass over the blocks.

    Each row's sum is taken against a fixed shift ``s``, no running maximum, whose pass over
    every block and rescaling cost more (a beauty step: 106.8 against 104.4 ms,
    ``experiments/results/step_time.md``).  The shift bounds every logit
    (:func:`_logit_bound`), so no term overflows.  A sum of at least ``e^-30`` puts ``s`` at
    most ``30 + log N`` above the row's largest logit, so a term that underflowed (below
    ``e^-87``) was below ``N e^-57`` of the largest.  Where some row's sum is smaller, the
    step's rows take the running-maximum pass as well (:func:`_online_lse`), and those rows
    its lse.  At the last epoch of a beauty run the bound was 12-17 above the largest logit.
    """
    shift = _logit_bound(rows, table, precision)

    def step(carry, items: Block):
        total, low = carry  # [rows, slices], [students, slices]
        z = items.logits(rows)
        total = total + items.only_counted(jnp.exp(z - shift[:, None, None])).sum(axis=2)
        real = items.real
        student_z = z[num_rec:] if real is None else jnp.where(real, z[num_rec:], jnp.inf)
        return (total, jnp.minimum(low, student_z.min(axis=2))), None

    init = (jnp.zeros((rows.shape[0], slices), jnp.float32),
            jnp.full((rows.shape[0] - num_rec, slices), jnp.inf, jnp.float32))
    (total, low), _, _ = scan_blocks(step, init, table, block, slices, valid, precision)
    lse = shift + jnp.log(total.sum(axis=1))
    again = lse - shift < -_SUM_FLOOR  # False for NaN: nothing to recover there
    lse = jax.lax.cond(
        jnp.any(again),
        lambda: jnp.where(again, _online_lse(rows, table, block, slices, valid, precision), lse),
        lambda: lse)
    return lse, low.min(axis=1)


def _online_lse(rows, table, block, slices, valid, precision):
    """Per row, the log-sum-exp against a running maximum: exact whatever the logits' range."""
    def step(carry, items: Block):
        top, total = carry  # [rows, slices] each
        z = items.logits(rows)
        new_top = jnp.maximum(top, z.max(axis=2))
        terms = items.only_counted(jnp.exp(z - new_top[..., None]))
        return (new_top, total * jnp.exp(top - new_top) + terms.sum(axis=2)), None

    shape, f32 = (rows.shape[0], slices), jnp.float32
    # A finite start: a block of padding rows alone (all -inf) leaves it as it was.
    init = (jnp.full(shape, jnp.finfo(f32).min, f32), jnp.zeros(shape, f32))
    (top, total), _, _ = scan_blocks(step, init, table, block, slices, valid, precision)
    peak = top.max(axis=1)
    return peak + jnp.log(jnp.sum(total * jnp.exp(top - peak[:, None]), axis=1))


def _logit_bound(rows, table, precision):
    """[rows]: ``|row| max_j |item_j|`` (Cauchy-Schwarz), of the operands as the products
    take them: no logit exceeds it but by the products' rounding."""
    def norms(x):
        return jnp.sqrt(jnp.sum(jnp.square(x.astype(precision).astype(jnp.float32)), axis=1))

    return norms(rows) * norms(table).max()


def _forward_clamp(students, table, lse, block, slices, valid, precision):
    """Per student row, the clamp's correction ``sum_j softplus(x_j)`` and its slope
    ``sum_j sigmoid(x_j)``, ``x_j = log 1e-24 - log p_j``, over the blocks."""
    def step(carry, items: Block):
        correction, slope = carry
        x = jnp.log(LOG_EPSILON) - (items.logits(students) - lse[:, None, None])
        small = jnp.exp(-jnp.abs(x))  # one exp serves both: softplus and sigmoid
        softplus = items.only_counted(jnp.maximum(x, 0.0) + jnp.log1p(small))
        sigmoid = items.only_counted(jnp.where(x >= 0, 1.0, small) / (1.0 + small))
        return (correction + softplus.sum(axis=(1, 2)), slope + sigmoid.sum(axis=(1, 2))), None

    zeros = jnp.zeros_like(lse)
    (correction, slope), _, _ = scan_blocks(step, (zeros, zeros), table, block, slices, valid,
                                             precision)
    return correction, slope


def _backward_clamp(students, table, lse, g, block, slices, valid, precision):
    """The clamp's own part of the gradient, ``-g_i sigmoid(x_ij)`` on the logits (its part
    through lse joins lse's gradient): [rows, d] and [N, d], float32."""
    students_t = materialized_transpose(students)

    def step(d_students, items: Block):
        p = jnp.exp(items.logits(students) - lse[:, None, None])
        # sigmoid(x) = eps / (p + eps)
        weight = items.only_counted(-g[:, None, None] * LOG_EPSILON / (p + LOG_EPSILON))
        d_items_rows, d_block = backward_products(students_t, weight, items)
        return d_students + d_items_rows, d_block

    d_students, d_blocks, blocks = scan_blocks(step, _zeros32(students), table, block,
                                                slices, valid, precision)
    return d_students, blocks.table_grad(d_blocks)


def _gather_sizes(rows: int) -> list[int]:
    """The gathered buffers' sizes for ``rows`` student rows, smallest first."""
    return sorted({max(1, rows // divisor) for divisor in _GATHER_DIVISORS})


def _clamped_rows(students, lse, low):
    """Which student rows need the clamp's correction, and how to run it: a branch (0: none;
    k: the rows gathered at ``index[:size]``, the k-th of :func:`_gather_sizes`; the last: every
    row) and the gather ``index``.

    The correction is below float32 resolution for rows whose probabilities all stay above
    1e-15.  The others (none early in training, a few percent later) are gathered into the
    smallest buffer that holds them, or all rows are taken when more need it.
    """
    clamped = low - lse < _CLAMP_FREE_LOG_PROB
    count = clamped.sum()
    sizes = _gather_sizes(len(students))
    index = jnp.nonzero(clamped, size=sizes[-1], fill_value=len(students))[0]
    # 0 when none is clamped, then one branch per size, then every row.
    branch = jnp.where(count == 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), count))
    return clamped, branch, index


def _zeros32(values: jax.Array) -> jax.Array:
    """float32 zeros of ``values``' shape: the gradients' accumulators."""
    return jnp.zeros(values.shape, jnp.float32)


def _gathered(index, values):
    return jnp.take(values, index, axis=0, mode="clip")


def _scattered(index, values, length):
    return jnp.zeros((length, *values.shape[1:]), values.dtype).at[index].set(values, mode="drop")


def _forward(rows, table, num_rec, block, slices, valid, precision):
    """``rows`` in the product dtype, ``table`` float32."""
    lse, low = _forward_lse(rows, table, num_rec, block, slices, valid, precision)
    students, student_lse = rows[num_rec:], lse[num_rec:]
    zeros = jnp.zeros_like(student_lse)
    if not len(students):
        return (lse, zeros), (zeros, zeros > 0, jnp.zeros((), jnp.int32), jnp.zeros(1, jnp.int32))
    clamped, branch, index = _clamped_rows(students, student_lse, low)

    def gathered(size):
        at = index[:size]
        sums = _forward_clamp(_gathered(at, students), table, _gathered(at, student_lse),
                              block, slices, valid, precision)
        return tuple(_scattered(at, x, len(students)) for x in sums)

    def every_row():
        sums = _forward_clamp(students, table, student_lse, block, slices, valid, precision)
        return tuple(jnp.where(clamped, x, 0.0) for x in sums)

    correction, slope = jax.lax.switch(branch, [
        lambda: (zeros, zeros),
        *(functools.partial(gathered, size) for size in _gather_sizes(len(students))),
        every_row])
    return (lse, correction), (slope, clamped, branch, index)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def catalogue_sums(rows: jax.Array, table: jax.Array, num_rec: int, valid: int,
                   block: int = DEFAULT_BLOCK, slices: int = 1,
                   precision: str = "float32") -> tuple[jax.Array, jax.Array]:
    """Per row, the log-sum-exp of its logits over the catalogue; per student row, the clamp.

    Args:
      rows: [R, d] float32 query rows: ``num_rec`` recommendation rows, then the TED student rows.
      table: [R, d] item rows; ``slices`` must divide R.
      num_rec: how many of the rows come before the student rows.
      valid: N, the catalogue's items: the table's first rows (the rest are padding).
      block: items per block and slice.
      slices: the table's row slices (the ``model`` axis of a mesh that splits it; 1 otherwise).
      precision: the products' operand dtype, one of :data:`mqsa_jax.config.PRECISIONS`.

    Returns:
      ``lse`` [R] = ``log sum_j exp(z_j)``, ``z = rows @ table.T``, and for the student rows
      ``correction`` [R - num_rec] = ``sum_j log(p_j + 1e-24) - log p_j`` with ``p = softmax(z)``
      (0 for a row whose ``p_j`` are all above 1e-15: there it is below float32 resolution).
    """
    return _forward(rows.astype(precision), table, num_rec, block, slices, valid, precision)[0]


def _catalogue_sums_fwd(rows, table, num_rec, valid, block, slices, precision):
    operands = rows.astype(precision)
    outputs, clamp = _forward(operands, table, num_rec, block, slices, valid, precision)
    return outputs, (operands, table, outputs[0], *clamp)


def _catalogue_sums_bwd(num_rec, valid, block, slices, precision, residuals, cotangents):
    rows, table, lse, slope, clamped, branch, index = residuals  # rows in the product dtype
    g_lse, g_correction = cotangents
    # dlse/dz = p.  d correction/dz = slope * p - sigmoid(x): the part through lse joins lse's
    # own coefficient (slope is 0 where there is no correction); the rest is computed for the
    # rows that have a correction only, as in the forward pass.
    coefficient = g_lse.at[num_rec:].add(g_correction * slope)
    rows_t = materialized_transpose(rows)

    def step(d_rows, items: Block):
        p = items.only_counted(jnp.exp(items.logits(rows) - lse[:, None, None])
                               * coefficient[:, None, None])
        d_items_rows, d_block = backward_products(rows_t, p, items)
        return d_rows + d_items_rows, d_block

    d_rows, d_blocks, blocks = scan_blocks(step, _zeros32(rows), table, block, slices, valid,
                                            precision)
    d_table = blocks.table_grad(d_blocks)
    students, student_lse = rows[num_rec:], lse[num_rec:]
    if not len(students):
        return d_rows, d_table

    def gathered(size):
        at = index[:size]
        g = jnp.where(at < len(students), _gathered(at, g_correction), 0.0)
        d_students, d_clamp_table = _backward_clamp(
            _gathered(at, students), table, _gathered(at, student_lse), g, block, slices, valid,
            precision)
        return _scattered(at, d_students, len(students)), d_clamp_table

    def every_row():
        g = jnp.where(clamped, g_correction, 0.0)
        return _backward_clamp(students, table, student_lse, g, block, slices, valid, precision)

    d_students, d_clamp_table = jax.lax.switch(branch, [
        lambda: (_zeros32(students), jnp.zeros_like(table)),
        *(functools.partial(gathered, size) for size in _gather_sizes(len(students))),
        every_row])
    return d_rows.at[num_rec:].add(d_students), d_table + d_clamp_table


catalogue_sums.defvjp(_catalogue_sums_fwd, _catalogue_sums_bwd)
