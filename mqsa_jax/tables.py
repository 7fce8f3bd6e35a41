"""The item table's rows, read where they live: logical axis names and the sharded lookup.

Parameters carry logical axis names (:data:`ITEM` for the table's rows, :data:`EMBED` for the
hidden width, ...); the config's ``logical_axis_rules`` map them to mesh axes
(:class:`mqsa_jax.partitioning.Partitioner` makes the shardings from them).  Code that reads
the table asks the current mesh (``jax.set_mesh``) and rules (``flax.linen.logical_axis_rules``)
how it is split, so neither the model nor the losses take anything from the partitioner: outside
a mesh, or on a mesh that does not split the rows, a lookup is a plain gather.

The table may hold more rows than the catalogue has items: on a mesh it is padded to a whole
number of rows per device (:func:`padded_rows`).  Ids from ``num_items`` up (the padding id and
the padded rows) read zero rows and so never receive a gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mqsa_jax.rounding import round_up

# Logical axis names.
BATCH = "batch"  # rows of a batch
ITEM = "item"  # rows of the item table: the catalogue
EMBED = "embed"  # the hidden width
HIDDEN = "hidden"  # a dense layer's outputs
POSITION = "position"  # rows of the position table
BRANCH = "branch"  # the query windows' stacked branches


def padded_rows(num_items: int, multiple: int) -> int:
    """The item table's rows: ``num_items`` rounded up to a multiple of ``multiple``."""
    return round_up(num_items, multiple)


def real_rows(rows: int, num_items: int) -> jax.Array:
    """[rows] bool: which rows of a padded item table (or columns of a score row) are items,
    not padding."""
    return jnp.arange(rows) < num_items


def mesh_axis(logical: str) -> tuple[str | None, int]:
    """The current mesh's axis that ``logical`` maps to under the current rules, and its size;
    ``(None, 1)`` outside a mesh or where the rules replicate it."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None, 1
    axis = nn.logical_to_mesh_axes((logical,))[0]
    if axis is None:
        return None, 1
    return axis, mesh.shape[axis]


def table_slices() -> int:
    """How many row slices the item table is split into on the current mesh (1 without)."""
    return mesh_axis(ITEM)[1]


def lookup_rows(table: jax.Array, ids: jax.Array, num_items: int | None = None,
                batch_split: bool = True) -> jax.Array:
    """Rows of the item table at ``ids``, read where they live.

    On a mesh that splits the table's rows, each device gathers the ids that fall in its slice,
    zeros for the rest, and a sum over the row axis completes the rows: what moves is
    ``[ids, d]``, never the table.

    Args:
      table: [R, d], R >= the catalogue's items (padded rows at the end).
      ids: [B, ...] item ids.
      num_items: ids from here up (the padding id) read zero rows; None: every id is a real
        item (no mask needed).
      batch_split: whether ``ids``' first axis follows the mesh's batch axis (a batch's rows);
        otherwise every device reads all of them (the loss's packed positions).

    Returns:
      [B, ..., d].
    """
    if num_items is not None:
        ids = jnp.where(ids < num_items, ids, table.shape[0])  # past the end: a zero row
    axis, slices = mesh_axis(ITEM)
    if slices == 1:
        if num_items is None:
            return jnp.take(table, ids, axis=0, mode="clip")
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=0)
    batch_axis, batch_size = mesh_axis(BATCH)
    rows = P(batch_axis) if batch_split and ids.shape[0] % batch_size == 0 else P()

    def local(block, block_ids):
        offset = jax.lax.axis_index(axis) * block.shape[0]
        # Shifted out of range, the other slices' ids (and the padding id) read zeros.
        shifted = block_ids - offset
        shifted = jnp.where(shifted < 0, block.shape[0], shifted)
        return jax.lax.psum(jnp.take(block, shifted, axis=0, mode="fill", fill_value=0), axis)

    return jax.shard_map(local, in_specs=(P(axis), rows), out_specs=rows)(table, ids)


def add_rows(table: jax.Array, ids: jax.Array, updates: jax.Array) -> jax.Array:
    """``table`` [R, d] with ``updates`` [M, d] added at rows ``ids`` [M] (repeats add up; ids
    past R are dropped): the transpose of :func:`lookup_rows`, accumulated in place.

    On a mesh that splits the table's rows, each device adds the ids that fall in its slice:
    nothing ``[R, d]``-sized moves between devices.
    """
    axis, slices = mesh_axis(ITEM)
    if slices == 1:
        return table.at[ids].add(updates, mode="drop")

    def local(block, block_ids, block_updates):
        shifted = block_ids - jax.lax.axis_index(axis) * block.shape[0]
        shifted = jnp.where(shifted < 0, block.shape[0], shifted)
        return block.at[shifted].add(block_updates, mode="drop")

    return jax.shard_map(local, in_specs=(P(axis), P(), P()), out_specs=P(axis))(
        table, ids, updates)
