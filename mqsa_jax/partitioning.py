"""Where arrays live: a ("data", "model") device mesh, the one place that knows about devices.

Parameters carry logical axis names (:mod:`mqsa_jax.tables`); the config's
``logical_axis_rules`` map them to the mesh's axes: by default a batch's rows go over ``data``
and the item table's rows (with their optimizer moments) over ``model``, and the rest is
replicated.  The same jitted train and evaluation steps run on one device (a 1 x 1 mesh) and on
any mesh, with the shardings derived from those names; XLA's SPMD partitioner inserts the
collectives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mqsa_jax.config import TrainConfig
from mqsa_jax.errors import UserError
from mqsa_jax.tables import BATCH, ITEM, mesh_axis

DATA, MODEL = "data", "model"


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


def parse_rules(rules: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The config's ``("batch:data", "item:model")`` (validated there) -> flax's
    ``(("batch", "data"), ("item", "model"))``."""
    return tuple(tuple(rule.split(":")) for rule in rules)


class Partitioner:
    """A ``(data, model)`` mesh of the first ``data * model`` devices, its logical axis rules,
    and where each array of a run lives on it."""

    def __init__(self, data: int = 1, model: int = 1,
                 rules: Sequence[str] = TrainConfig.logical_axis_rules):
        devices = jax.devices()
        if data * model > len(devices):
            raise UserError(f"mesh data={data},model={model} needs {data * model} devices, "
                            f"{len(devices)} available")
        self.data, self.model = data, model
        self.rules = parse_rules(rules)
        self.mesh = Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The mesh and rules that the model and losses read (:mod:`mqsa_jax.tables`): jitted
        steps are traced and called within."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def sharding(self, logical: P) -> NamedSharding:
        """Logical axis names -> where such an array lives on the mesh."""
        return nn.logical_to_mesh_sharding(logical, self.mesh, self.rules)

    @property
    def replicated(self) -> NamedSharding:
        """Held whole by every device."""
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        """A batch's rows (the first axis) over the mesh axis of ``batch``."""
        return self.sharding(P(BATCH))

    def devices_along(self, logical: str) -> int:
        """Over how many devices an axis named ``logical`` is split (1: replicated)."""
        with self.activate():
            return mesh_axis(logical)[1]

    @property
    def item_multiple(self) -> int:
        """The item table's rows must be a multiple of this: the devices its rows split over."""
        return self.devices_along(ITEM)

    def check_sizes(self, batch_size: int, eval_batch_size: int) -> None:
        """Refuses, as a user error, batch sizes that the mesh's batch axis does not divide."""
        rows = self.devices_along(BATCH)
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size % rows:
                raise UserError(f"{name} {size} does not split evenly over the {rows} devices "
                                "of the batch axis")

    def partition(self, jitted: Callable) -> PartitionedFunction:
        """A jitted function that runs (and lowers) under this mesh and its rules."""
        return PartitionedFunction(jitted, self.activate)

    def partition_init(self, init_fn: Callable[[], Any], logical_specs: Any
                       ) -> tuple[Callable[[], Any], Any]:
        """The train state's initialiser and shardings.

        Args:
          init_fn: ``() -> state``, computed on the host (the same on every process).
          logical_specs: the state's logical axis names (:func:`mqsa_jax.state.logical_specs`).

        Returns:
          ``(init, shardings)``: ``init()`` gives the state placed with ``shardings`` (by
          default the item table and its moments [R, d] split by rows over ``model``, the rest
          replicated).
        """
        shardings = nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)
        return (lambda: self.place(jax.device_get(init_fn()), shardings)), shardings

    def partition_step(self, step_fn: Callable, state_shardings: Any) -> PartitionedFunction:
        """``step_fn(state, arrays, batch) -> (state, aux)`` jitted for this mesh: the state
        with ``state_shardings`` and donated, the arrays (the teacher) replicated, the batch's
        rows over the batch axis; the aux (losses) replicated."""
        return self.partition(jax.jit(
            step_fn, donate_argnums=0,
            in_shardings=(state_shardings, self.replicated, self.batch),
            out_shardings=(state_shardings, self.replicated)))

    def place(self, tree: Any, shardings: NamedSharding | Any) -> Any:
        """Host arrays (the same on every process) -> global arrays with these shardings.

        Each process copies in only the slices its own devices hold, so with many hosts each one
        reads only its share of every batch.

        Args:
          tree: numpy arrays (any shapes).
          shardings: one ``NamedSharding`` for all, or a tree of them like ``tree``.

        Returns:
          ``tree`` of global ``jax.Array``s.
        """
        def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
            array = np.asarray(array)
            return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

        if isinstance(shardings, NamedSharding):
            return jax.tree.map(lambda x: put(x, shardings), tree)
        return jax.tree.map(put, tree, shardings)

    def replicate(self, tree: Any) -> Any:
        """Host arrays -> global arrays held whole by every device (the teacher's rows)."""
        return self.place(tree, self.replicated)

    def place_batch(self, array: np.ndarray) -> jax.Array:
        """A host array [B, ...] -> a global array with its rows split over ``data``."""
        return self.place(array, self.batch)


class PartitionedFunction:
    """A jitted function whose calls and lowerings enter its mesh's context (the lookups and
    losses read the mesh and rules while they are traced): no caller enters it by hand."""

    def __init__(self, jitted: Callable, context: Callable[[], contextlib.AbstractContextManager]):
        self._jitted, self._context = jitted, context

    def __call__(self, *args: Any) -> Any:
        with self._context():
            return self._jitted(*args)

    def lower(self, *args: Any) -> jax.stages.Lowered:
        with self._context():
            return self._jitted.lower(*args)
