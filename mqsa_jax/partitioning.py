"""Where arrays live: a ("data", "model") device mesh, the one place that knows about devices.

The batch is split over ``data``; the item table and its optimizer moments are split by rows
over ``model``; everything else is replicated.  The same jitted train and evaluation steps run
on one device (a 1 x 1 mesh) and on any mesh: XLA's SPMD partitioner inserts the collectives.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mqsa_jax.errors import UserError
from mqsa_jax.model import lookup_rows

DATA, MODEL = "data", "model"
ITEM_TABLE = "item_embedding"


def parse_mesh(text: str | None) -> tuple[int, int]:
    """``"data=4,model=2"`` -> (4, 2); missing axes are 1."""
    sizes = {DATA: 1, MODEL: 1}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        if name.strip() not in sizes or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--mesh {text}: expected data=N,model=M with positive integers")
        sizes[name.strip()] = int(value)
    return sizes[DATA], sizes[MODEL]


class Partitioner:
    """A ``(data, model)`` mesh of the first ``data * model`` devices, and where each array of
    a run lives on it."""

    def __init__(self, data: int = 1, model: int = 1):
        devices = jax.devices()
        if data * model > len(devices):
            raise UserError(f"mesh data={data},model={model} needs {data * model} devices, "
                            f"{len(devices)} available")
        self.data, self.model = data, model
        self.mesh = Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA))

    def check_sizes(self, num_items: int, batch_size: int, eval_batch_size: int) -> None:
        """Refuses, as a user error, sizes that the mesh's axes do not divide."""
        if num_items % self.model:
            raise UserError(f"the catalogue's {num_items} items do not split evenly over "
                            f"model={self.model}")
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size % self.data:
                raise UserError(f"{name} {size} does not split evenly over data={self.data}")

    def item_lookup(self, table: jax.Array, ids: jax.Array, split: bool = True) -> jax.Array:
        """Rows of the item table at ``ids`` (the padding id gives zeros), read where they live.

        On a model-split mesh each device gathers the ids that fall in its slice of the rows,
        zeros for the rest, and a sum over ``model`` completes the rows: what moves is
        ``[ids, d]``, never the table, however large the catalogue.  With ``split`` the ids'
        first axis (a batch's rows) is split over ``data``; without, every device reads all
        of them (the packed positions of the loss, whose rows the N-wide products split).

        Args:
          table: [N, d], its rows split over ``model``.
          ids: [B, ...] item ids; N (the padding id) reads a zero row.
          split: whether ``ids``' first axis is split over ``data``.

        Returns:
          [B, ..., d], placed as ``ids``.
        """
        if self.model == 1:
            return lookup_rows(table, ids)
        rows = P(DATA) if split and ids.shape[0] % self.data == 0 else P()

        def local(block, block_ids):
            offset = jax.lax.axis_index(MODEL) * block.shape[0]
            # Shifted out of range, the other slices' ids (and the padding id) read zeros.
            shifted = block_ids - offset
            shifted = jnp.where(shifted < 0, block.shape[0], shifted)
            return jax.lax.psum(lookup_rows(block, shifted), MODEL)

        return jax.shard_map(local, mesh=self.mesh, in_specs=(P(MODEL), rows),
                             out_specs=rows)(table, ids)

    def state_shardings(self, state):
        """Rows of the item table, and of every optimizer array shaped like it, over ``model``.

        Args:
          state: a train state (or its shapes, from ``jax.eval_shape``).

        Returns:
          A tree of ``NamedSharding`` like ``state``: ``P("model")`` for the table and its
          moments [N, d], replicated for the rest.
        """
        table_shape = None

        def find_table(path, leaf):
            nonlocal table_shape
            if ITEM_TABLE in jax.tree_util.keystr(path):
                table_shape = table_shape or leaf.shape

        jax.tree_util.tree_map_with_path(find_table, state)

        def spec(path, leaf):
            if ITEM_TABLE in jax.tree_util.keystr(path) and leaf.shape == table_shape:
                return NamedSharding(self.mesh, P(MODEL))
            return self.replicated

        return jax.tree_util.tree_map_with_path(spec, state)

    def place(self, tree, shardings):
        """Host arrays (the same on every process) -> global arrays with these shardings.

        Each process copies in only the slices its own devices hold, so with many hosts each one
        reads only its share of every batch.

        Args:
          tree: numpy arrays (any shapes).
          shardings: one ``NamedSharding`` for all, or a tree of them like ``tree``.

        Returns:
          ``tree`` of global ``jax.Array``s.
        """
        def put(array, sharding):
            array = np.asarray(array)
            return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

        if isinstance(shardings, NamedSharding):
            return jax.tree.map(lambda x: put(x, shardings), tree)
        return jax.tree.map(put, tree, shardings)

    def replicate(self, tree):
        """Host arrays -> global arrays held whole by every device (the teacher's rows)."""
        return self.place(tree, self.replicated)

    def place_batch(self, array: np.ndarray) -> jax.Array:
        """A host array [B, ...] -> a global array with its rows split over ``data``."""
        return self.place(array, self.batch)


def maybe_initialize_distributed() -> bool:
    """Starts ``jax.distributed`` when the environment describes several processes.

    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0) with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; or a cluster JAX detects itself: a Cloud TPU pod slice
    (``TPU_WORKER_HOSTNAMES`` with several hosts) or a SLURM job with several tasks.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        try:
            jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"],
                                       num_processes=int(env["JAX_NUM_PROCESSES"]),
                                       process_id=int(env["JAX_PROCESS_ID"]))
        except (KeyError, ValueError) as e:
            raise UserError("JAX_COORDINATOR_ADDRESS needs JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                            f"as integers ({e})") from None
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or int(env.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
        return True
    return False
