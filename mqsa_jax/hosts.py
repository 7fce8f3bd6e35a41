"""Per-host input: in a run of several processes, each holds only the users its devices train on.

The users are split along the mesh's batch axis.  The processes whose devices hold the same rows
of a batch form one *shard*; shard k of K loads only the dataset's records k*R/K to (k+1)*R/K
(records of 1,024 consecutive users, :mod:`mqsa_jax.data.tfds_dataset`), so no process holds the
whole dataset, only what the model needs whole: the teacher's transition counts, which are
summed over the shards.

Training follows the one global shuffle of all users, as a single process does: each shard packs
its own users of each batch into its own rows, and the shards agree on each batch's static
shape (rows, target capacity) once per window of batches, with one collective of a few integers.
Evaluation ranks each shard's users in the same way, and the metric sums add up over the batch
axis inside the step.  Where the shards would overlap (a batch axis that does not split evenly
over the processes), or a shard would get no record (under 1,024 users a shard), every process
holds every user, as before.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from mqsa_jax.config import Config
from mqsa_jax.data.arrays import SequenceData, Transitions
from mqsa_jax.data.tfds_dataset import TooFewRecords
from mqsa_jax.packing import Batch, Packing, target_capacity
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.runs import load_run_dataset, sequence_data
from mqsa_jax.step_shapes import ShapePlan
from mqsa_jax.tables import BATCH

# Batches packed ahead per agreement on their shapes (one collective per this many steps) and
# per choice of the shapes they run at.
AGREEMENT_WINDOW = 64


@dataclasses.dataclass(frozen=True)
class HostShard:
    """This process's share of the users: shard ``index`` of ``count``, holding the global
    users ``first_user`` to ``first_user + num_users`` of ``total_users``; ``processes`` gives
    each process's shard."""

    index: int = 0
    count: int = 1
    first_user: int = 0
    num_users: int = 0
    total_users: int = 0
    processes: tuple[int, ...] = (0,)

    @property
    def split(self) -> bool:
        return self.count > 1

    def local(self, users: np.ndarray) -> np.ndarray:
        """Global user indices -> the local indices of those this shard holds, in order."""
        mine = users[(users >= self.first_user) & (users < self.first_user + self.num_users)]
        return mine - self.first_user

    def gather(self, array: np.ndarray | jax.Array) -> np.ndarray:
        """Every shard's ``array`` (of one shape on all processes; integers within int32, as
        JAX moves them), stacked: [count, ...]."""
        array = np.asarray(array)
        if array.dtype.kind in "iu":
            array = array.astype(np.int32)
        everyone = np.asarray(multihost_utils.process_allgather(array))
        return everyone[[self.processes.index(k) for k in range(self.count)]]

    def placer(self, partitioner: Partitioner) -> Callable[[np.ndarray], jax.Array]:
        """``rows -> global array`` with rows over the batch axis: this shard's own rows
        (``[B / count, ...]``) where the users are split, else the whole batch's."""
        if not self.split:
            return partitioner.place_batch

        def place(rows: np.ndarray) -> jax.Array:
            shape = (rows.shape[0] * self.count, *rows.shape[1:])
            return jax.make_array_from_process_local_data(partitioner.batch, rows, shape)

        return place

    def batches(self, packing: Packing, order: np.ndarray, first: int, stop: int,
                plan: ShapePlan | None = None) -> Iterator[tuple[Batch, int]]:
        """Batches ``first`` to ``stop`` of the global ``order`` of users, as this process
        places them: each with the whole batch's number of real targets, at the shape ``plan``
        (:class:`mqsa_jax.step_shapes.ShapePlan`) runs it at (None: its own)."""
        size = packing.batch_size
        for start in range(first, stop, AGREEMENT_WINDOW):
            window = range(start, min(stop, start + AGREEMENT_WINDOW))
            if self.split:
                packed = [packing.pack(self.local(order[k * size:(k + 1) * size]))
                          for k in window]
                agreed = self.gather([[len(batch.items), count] for batch, count in packed])
                counts = agreed[:, :, 1].sum(axis=0).tolist()
                shapes = [(int(rows), target_capacity(targets))
                          for rows, targets in zip(agreed[:, :, 0].max(axis=0), counts)]
            else:
                packed = list(packing.batches(order, window.start, window.stop))
                counts = [count for _, count in packed]
                shapes = [batch.shape for batch, _ in packed]
            run_at = shapes if plan is None else plan.assign(shapes)
            for (batch, _), count, (rows, capacity) in zip(packed, counts, run_at):
                if batch.shape != (rows, capacity):
                    batch = batch.padded(rows, capacity, packing.padding_id)
                yield batch, int(count)


def batch_shards(partitioner: Partitioner) -> tuple[int, int, tuple[int, ...]]:
    """(this process's shard, the number of shards, each process's shard) along the mesh's
    batch axis; one shard where the processes' blocks of it overlap or are uneven."""
    single = (0, 1, (0,) * jax.process_count())
    axis = dict(partitioner.rules).get(BATCH)
    if jax.process_count() == 1 or axis is None:
        return single
    position = partitioner.mesh.axis_names.index(axis)
    covered: dict[int, set[int]] = {}
    for index, device in np.ndenumerate(partitioner.mesh.devices):
        covered.setdefault(device.process_index, set()).add(index[position])
    blocks = sorted({tuple(sorted(rows)) for rows in covered.values()})
    size = partitioner.mesh.devices.shape[position]
    even = (len(covered) == jax.process_count() and len({len(b) for b in blocks}) == 1
            and sorted(i for b in blocks for i in b) == list(range(size))
            and all(b == tuple(range(b[0], b[0] + len(b))) for b in blocks))
    if not even or len(blocks) == 1:
        return single
    processes = tuple(blocks.index(tuple(sorted(covered[p])))
                      for p in range(jax.process_count()))
    return processes[jax.process_index()], len(blocks), processes


def host_shard(index: int, count: int, processes: tuple[int, ...],
               num_users: int) -> HostShard:
    """The shard of a process holding ``num_users`` users; says what it holds where the users
    are split."""
    shard = HostShard(index, count, num_users=num_users, total_users=num_users,
                      processes=processes)
    if not shard.split:
        return shard
    counts = shard.gather(num_users)
    shard = dataclasses.replace(shard, first_user=int(counts[:index].sum()),
                                total_users=int(counts.sum()))
    print(f"mqsa-jax: process {jax.process_index()} holds users {shard.first_user:,} to "
          f"{shard.first_user + num_users - 1:,} of {shard.total_users:,} (shard {index + 1} "
          f"of {count})", file=sys.stderr, flush=True)
    return shard


def summed_transitions(local: Transitions, shard: HostShard) -> Transitions:
    """The transition counts of every shard's users: this shard's ``local`` ones summed with
    the others' (each shard's pairs as head, tail and count columns)."""
    if not shard.split:
        return local
    n = local.num_items
    width = int(shard.gather(len(local.indices)).max())

    def everyone(values, fill):  # every shard's values, padded to one width: [count * width]
        return shard.gather(np.pad(values, (0, width - len(values)), constant_values=fill)).ravel()

    heads = everyone(np.repeat(np.arange(n, dtype=np.int32), local.row_lengths), -1)
    real = heads >= 0
    keys = heads[real].astype(np.int64) * n + everyone(local.indices, 0)[real]
    pairs, inverse = np.unique(keys, return_inverse=True)
    counts = np.bincount(inverse, weights=everyone(local.counts, 0.0)[real])
    return Transitions.from_pairs(pairs, counts, n)


def prepare_host_data(config: Config, partitioner: Partitioner,
                      data_dir: Path | None = None) -> tuple[SequenceData, HostShard]:
    """Model-ready arrays of this process's users (every user on one process; with several,
    its shard's), with the teacher's transitions of every user, and its shard."""
    index, count, processes = batch_shards(partitioner)
    try:
        dataset = load_run_dataset(config, data_dir, (index, count))
    except TooFewRecords:  # a small dataset (under 1,024 users a shard): every process holds it
        index, count, processes = 0, 1, (0,) * jax.process_count()
        dataset = load_run_dataset(config, data_dir)
    data = sequence_data(config, dataset)
    shard = host_shard(index, count, processes, data.num_users)
    return dataclasses.replace(
        data, transitions=summed_transitions(data.transitions, shard)), shard
