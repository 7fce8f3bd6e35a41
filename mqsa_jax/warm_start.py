"""Warm start: a new run's first parameters from another run's checkpoint, on a catalogue that
may have gained and lost items since (``train --init-from``).

The item table's rows are matched by the items' source ids, not by index: an item both
catalogues know keeps its trained row, a new item keeps its fresh initialisation, an item that
left is dropped.  Every other parameter is copied where its shape matches (all of them, as the
model config must match).  The optimiser starts fresh and the teacher is the new data's, as in
any run; the run's config records where its weights came from, its provenance file the rest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.checkpoint import has_checkpoint
from mqsa_jax.config import Config, ModelConfig, read_run_config
from mqsa_jax.data import registry
from mqsa_jax.errors import UserError
from mqsa_jax.model import item_table, with_item_table
from mqsa_jax.rundir import RunDir
from mqsa_jax.runs import restore_trained
from mqsa_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class WarmSource:
    """The checked source of a warm start: its run, checkpoint, config and catalogue [N]."""

    run: Path
    checkpoint: str
    config: Config
    item_ids: np.ndarray


def warm_source(config: Config, data_dir: Path | None = None) -> WarmSource:
    """The run that ``config.train.init_from`` names, checked before any data is read: a run
    directory with a checkpoint whose model config is ``config``'s.

    Its catalogue is the one it recorded; a run from before runs recorded it is taken to have
    trained on its dataset as that dataset is now (the checkpoint's item count is checked).
    """
    source = Path(config.train.init_from)
    source_config = read_run_config(source)
    if not has_checkpoint(source):
        raise UserError(f"--init-from {source}: the run has no checkpoint yet")
    old, new = dataclasses.asdict(source_config.model), dataclasses.asdict(config.model)
    differ = [f"{name} ({old[name]} there, {new[name]} here)" for name in old
              if old[name] != new[name]]
    if differ:
        raise UserError(f"--init-from {source}: its model config differs: {', '.join(differ)}; "
                        f"the fields of {ModelConfig.__name__} must match to copy its weights")
    item_ids = RunDir(source).item_ids()
    if item_ids is None:
        item_ids = registry.catalogue_ids(source_config.dataset, data_dir)
    return WarmSource(source, config.train.init_checkpoint, source_config, item_ids)


def _merged(fresh, trained, at_source: jax.Array, at_new: jax.Array):
    """The fresh parameters with the trained ones copied in: the item table row by row
    (``at_new[k]`` from ``at_source[k]``), the others whole where their shapes match."""
    table = item_table(fresh).at[at_new].set(item_table(trained)[at_source])
    whole = jax.tree.map(lambda new, old: old if old.shape == new.shape else new, fresh, trained)
    return with_item_table(whole, table)


def warm_state(state: TrainState, source: WarmSource,
               item_ids: np.ndarray) -> tuple[TrainState, dict]:
    """``state`` (fresh, as the run's partitioner placed it) with the source's weights.

    Args:
      state: the new run's initial train state.
      source: the checked source (:func:`warm_source`).
      item_ids: [N'] the new catalogue's source ids, in its row order.

    Returns:
      The state, placed as ``state`` was, and a report for the run's provenance: the source,
      its checkpoint's epoch and step, the item rows copied, new and dropped, and the
      parameters copied and initialised.
    """
    _, trained, progress = restore_trained(source.run, source.checkpoint, source.config,
                                           len(source.item_ids))
    _, at_source, at_new = np.intersect1d(source.item_ids, item_ids, assume_unique=True,
                                          return_indices=True)
    shardings = jax.tree.map(lambda leaf: leaf.sharding, state.params)
    params = jax.jit(_merged, out_shardings=shardings, donate_argnums=0)(
        state.params, trained.params, jnp.asarray(at_source, jnp.int32),
        jnp.asarray(at_new, jnp.int32))
    # Every parameter but the item table (copied row by row): copied whole, or initialised.
    table = item_table(trained.params)
    names = {jax.tree_util.keystr(path): leaf.shape == fresh.shape
             for (path, leaf), fresh in zip(jax.tree_util.tree_leaves_with_path(trained.params),
                                            jax.tree.leaves(params))
             if leaf is not table}
    report = {"run": str(source.run), "checkpoint": source.checkpoint,
              "epoch": progress.epoch, "step": int(trained.step),
              "items_copied": len(at_new), "items_new": len(item_ids) - len(at_new),
              "items_dropped": len(source.item_ids) - len(at_new),
              "parameters_copied": sorted(n for n, same in names.items() if same),
              "parameters_initialised": sorted(n for n, same in names.items() if not same)}
    return state.replace(params=params), report
