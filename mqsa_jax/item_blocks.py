"""The catalogue's blocks: how the N-wide scans of :mod:`mqsa_jax.blocked` and of the ranking
(:func:`mqsa_jax.evaluation.label_ranks`) cut the item table, and their products in a chosen
precision.

Each of the table's ``slices`` row slices (a device's share, on a mesh that splits the rows) is
cut into blocks of one size; a scan step holds one block of every slice, sliced inside the
loop (no copy of the table), and its ``[rows, slices * b]`` logits stay in cache.

The products take their operands in a chosen precision (:data:`mqsa_jax.config.PRECISIONS`)
and always accumulate in float32; every statistic (maxima, sums, lse, the clamp) and every
gradient stays float32.  With bfloat16 operands the scan reads the table twice, once by rows
``[b, d]`` (the gradient's ``weight @ block``) and once by columns ``[d, b]`` (the logits):
on XLA:CPU a scan's bfloat16 products ran at 2.8x the float32 rate with the table by columns
and at the float32 rate with it by rows (12 blocks of [6144, 64] x [64, 1024] on a Xeon with
AMX: 10.3 ms, 28.2 ms, 29.0 ms in float32; ``experiments/results/product_layouts.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mqsa_jax.rounding import ceil_div, round_up


class Blocks(NamedTuple):
    """How the scan cuts each of the table's ``slices`` row slices of ``local`` rows: into
    ``count`` blocks of ``block`` rows, the last one ending at the slice's end and so
    overlapping the one before by ``overlap`` rows (which it leaves to that one)."""

    slices: int
    local: int
    count: int
    block: int

    @classmethod
    def even(cls, rows: int, block: int, slices: int) -> Blocks:
        """Blocks of about ``block`` rows, all of one size: the scan has no tail step of
        another shape, compiled again, and the table is not copied to pad it.  From 64 rows
        the size is a multiple of 64: over blocks of 1,016 items a beauty step took 107.6 ms,
        over 1,024 (more overlap) 104.4 ms (``experiments/results/step_time.md``)."""
        local = rows // slices
        size = ceil_div(local, ceil_div(local, block))
        size = min(local, round_up(size, 64)) if size >= 64 else size
        return cls(slices, local, ceil_div(local, size), size)

    @property
    def overlap(self) -> int:
        return self.count * self.block - self.local

    def table_grad(self, d_blocks: jax.Array) -> jax.Array:
        """[slices * local, d] from the blocks' gradients ``[count, d, slices * block]`` (the
        layout of the products that compute them, see :func:`backward_products`)."""
        d = d_blocks.shape[1]
        grads = d_blocks.reshape(self.count, d, self.slices, self.block).transpose(2, 0, 3, 1)
        grads = jnp.concatenate([
            grads[:, :-1].reshape(self.slices, (self.count - 1) * self.block, d),
            grads[:, -1, self.overlap:]], axis=1)
        return grads.reshape(self.slices * self.local, d)


class Block(NamedTuple):
    """One step's block of the table: ``items`` [slices, b, d] in the product dtype, the same
    ``columns`` [slices, d, b] (bfloat16 products only, else None), ``real`` [slices, b], which
    rows are items, not padding, and ``counted``, which are items the block before did not
    hold (each None where all are); ``ids`` [slices, b], the rows' indices in the table.

    Padding rows get logits -inf; rows the block before held keep theirs (a maximum or a
    minimum takes them again harmlessly) and each sum leaves them out with :meth:`only_counted`.
    Masking the sums' terms instead of the logits costs less: masked logits, read by several
    reductions, were written out once more (a beauty step: 111.5 against 108.5 ms,
    ``experiments/results/step_time.md``).
    """

    items: jax.Array
    columns: jax.Array | None
    real: jax.Array | None
    counted: jax.Array | None
    ids: jax.Array

    def logits(self, rows: jax.Array) -> jax.Array:
        """``rows`` [R, d] (product dtype) -> float32 logits [R, slices, b], -inf at padding."""
        if self.columns is None:
            right = _flat(self.items).T
        else:
            right = jnp.moveaxis(self.columns, 0, 1).reshape(self.columns.shape[1], -1)
        z = _dot(rows, right).reshape(rows.shape[0], *self.items.shape[:2])
        return z if self.real is None else jnp.where(self.real, z, -jnp.inf)

    def only_counted(self, values: jax.Array, fill: float = 0.0) -> jax.Array:
        """``values`` [R, slices, b] with ``fill`` where the item is padding or the block
        before's."""
        return values if self.counted is None else jnp.where(self.counted, values, fill)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """A product of operands in the product dtype, accumulated and returned in float32.
    float32 operands are multiplied as float32 on every backend (JAX's default rounds them to
    TF32 on recent GPUs and to bfloat16 on TPUs): each precision means the same everywhere."""
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jnp.matmul(a, b, precision=precision, preferred_element_type=jnp.float32)


def scan_blocks(step: Callable[[Any, Block], tuple[Any, Any]], carry: Any, table: jax.Array,
                block: int, slices: int, valid: int, precision: str
                ) -> tuple[Any, Any, Blocks]:
    """Runs ``carry, out = step(carry, Block)`` over the float32 ``table``'s
    :meth:`Blocks.even` blocks, cast to ``precision``.  Each block holds one block of every
    slice (on a mesh that splits the table's rows, the part each device holds), sliced inside
    the loop.

    Returns:
      The carry, the stacked outputs ``[count, ...]`` and the :class:`Blocks`.
    """
    blocks = Blocks.even(table.shape[0], block, slices)
    size, local = blocks.block, blocks.local
    operands = table.astype(precision)
    rows = operands.reshape(slices, local, -1)
    columns = None if precision == "float32" else jnp.moveaxis(
        materialized_transpose(operands).reshape(-1, slices, local), 1, 0)  # [slices, d, local]
    first_ids = jnp.arange(slices, dtype=jnp.int32)[:, None] * local
    padded = valid < table.shape[0]

    def body(carry, index):
        start = jnp.minimum(index * size, local - size)  # the last block ends at the slice's end
        position = start + jnp.arange(size, dtype=jnp.int32)
        ids = first_ids + position
        real = ids < valid if padded else None
        fresh = position >= index * size if blocks.overlap else None
        counted = real if fresh is None else fresh if real is None else real & fresh
        return step(carry, Block(
            jax.lax.dynamic_slice_in_dim(rows, start, size, axis=1),
            None if columns is None else jax.lax.dynamic_slice_in_dim(columns, start, size, 2),
            real, counted, ids))

    carry, out = jax.lax.scan(body, carry, jnp.arange(blocks.count, dtype=jnp.int32))
    return carry, out, blocks


def materialized_transpose(x: jax.Array) -> jax.Array:
    """``x.T`` written out, not folded into the products' dimension numbers: XLA:CPU runs
    products of a transposed bfloat16 operand on its generic dot, which has no bfloat16 x
    bfloat16 = float32 (a one-block scan, unrolled, failed so), and slower in either dtype."""
    return jax.lax.optimization_barrier(x.T)


def _flat(block: jax.Array) -> jax.Array:
    """``[slices, b, d] -> [slices * b, d]``: one 2-D product serves every slice."""
    return block.reshape(-1, block.shape[-1])


def backward_products(rows_t: jax.Array, weight: jax.Array, block: Block
                      ) -> tuple[jax.Array, jax.Array]:
    """For ``weight`` = dLoss/dz ``[rows, slices, b]`` (float32): ``weight @ block`` [rows, d]
    and the block's gradient ``rows.T @ weight`` [d, slices * b] (the layout that ran fastest
    on XLA:CPU; the transposes are undone once, after the scan), in float32, the operands in
    ``rows_t``'s dtype."""
    weight = weight.reshape(weight.shape[0], weight.shape[1] * weight.shape[2])
    weight = weight.astype(rows_t.dtype)
    return _dot(weight, _flat(block.items)), _dot(rows_t, weight)
