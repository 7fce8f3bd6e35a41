"""The pieces of one run, built from its config: the model, the partitioned init and step, the
packing of batches and the shapes they run at, the evaluators; and the stepping over an epoch's
batches.  The epochs, the checkpoints and the run's files are the loop's (:mod:`mqsa_jax.train`)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import VariableDict
from tqdm import tqdm

from mqsa_jax.config import Config
from mqsa_jax.dashboard import ProgressLog
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.hosts import HostShard
from mqsa_jax.model import MQSA
from mqsa_jax.packing import Batch, Packing
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.progress import EpochPartial
from mqsa_jax.runs import evaluation_sample, make_evaluators
from mqsa_jax.state import TrainState, init_state, logical_specs, make_optimizer
from mqsa_jax.step_shapes import ShapePlan
from mqsa_jax.steps import TrainArrays, train_step_fn


class Trainer:
    """Owns the data, model, step functions and evaluators of one run."""

    def __init__(self, config: Config, data: SequenceData, partitioner: Partitioner | None = None,
                 shard: HostShard | None = None):
        """``shard``: ``data`` holds that process's share of the users (:mod:`mqsa_jax.hosts`;
        None: every user)."""
        self.config, self.data = config, data
        self.shard = shard = shard or HostShard(num_users=data.num_users,
                                                total_users=data.num_users)
        self.partitioner = partitioner = (
            partitioner or Partitioner(rules=config.train.logical_axis_rules))
        partitioner.check_sizes(config.train.batch_size, config.eval.eval_batch_size)
        # The item table gets padding rows up to a whole number of rows per device.
        self.model = MQSA(config.model, data.num_items, partitioner.item_multiple)
        self.optimizer = make_optimizer(config)
        # The partitioner jits them: the state's shardings come from its logical axis names.
        self.init_state, shardings = partitioner.partition_init(
            lambda: init_state(self.model, self.optimizer, config),
            logical_specs(self.model, self.optimizer, config))
        self.train_step = partitioner.partition_step(
            train_step_fn(self.model, self.optimizer, config), shardings)
        self.arrays = partitioner.replicate(TrainArrays.from_data(data, config))
        self.packing = Packing(data, config.train.batch_size, partitioner.data // shard.count)
        self.shapes = ShapePlan.for_run(config.train.compile_cost_steps, data.max_len,
                                        data.num_items, config.loss.lambda_kd > 0)
        self.evaluators = make_evaluators(self.model, data, config, partitioner, shard=shard)
        sample = evaluation_sample(config, shard.total_users)
        self.sample_evaluators = sample if sample is None else make_evaluators(
            self.model, data, config, partitioner, users=shard.local(sample), shard=shard)
        self._place = shard.placer(partitioner)

    def place(self, batch: Batch) -> Batch:
        """A host batch with its rows split over the mesh's ``data`` axis."""
        return jax.tree.map(self._place, batch)

    def train_epoch(self, state: TrainState, order: np.ndarray, progress: tqdm | None = None
                    ) -> tuple[TrainState, dict[str, float]]:
        """One pass over the users in ``order``; returns the state and the mean batch losses."""
        stop = self.packing.num_batches(len(order))
        state, partial = self.train_steps(state, order, EpochPartial(), stop, progress)
        return state, partial.means()

    def train_steps(self, state: TrainState, order: np.ndarray, partial: EpochPartial,
                    stop: int, progress: tqdm | None = None,
                    log: ProgressLog | None = None) -> tuple[TrainState, EpochPartial]:
        """The batches of ``order`` from ``partial.batches`` up to ``stop``; returns the state
        and ``partial`` with their losses added."""
        totals, steps, seen, start = partial.totals, partial.batches, 0, time.perf_counter()
        for batch, count in self.shard.batches(self.packing, order, partial.batches, stop,
                                                self.shapes):
            state, losses = self.train_step(state, self.arrays, self.place(batch))
            totals = losses if totals is None else jax.tree.map(jnp.add, totals, losses)
            steps, seen = steps + 1, seen + count
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    targets_per_s=f"{seen / (time.perf_counter() - start):,.0f}", refresh=False)
            if log is not None:
                log.step(steps, seen, losses)
        return state, EpochPartial(steps, totals, partial.seconds + time.perf_counter() - start,
                                   partial.targets + seen)

    def evaluate(self, params: VariableDict, final: bool = True) -> dict[str, dict[str, float]]:
        """Both splits' metrics: every user's, or the eval_users sample's (when not ``final``,
        or with ``final_eval="sample"``)."""
        sample = self.sample_evaluators is not None and (
            not final or self.config.eval.final_eval == "sample")
        metrics = {e.split: e.evaluate(params)
                   for e in (self.sample_evaluators if sample else self.evaluators)}
        return {**metrics, **({"eval_users": self.config.eval.eval_users} if sample else {})}
