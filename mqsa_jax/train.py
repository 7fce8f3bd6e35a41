"""The training loop: epochs of packed batches, evaluation, checkpoints and the run's files.

The pieces it drives each have their own home: the step (:mod:`mqsa_jax.steps`), the batches
(:mod:`mqsa_jax.packing`), the evaluators (:mod:`mqsa_jax.evaluation`), the devices
(:mod:`mqsa_jax.partitioning`), the checkpoints (:mod:`mqsa_jax.checkpoint`) and their
progress record (:mod:`mqsa_jax.progress`), the run's files (:mod:`mqsa_jax.rundir`) and its
metrics' sinks (:mod:`mqsa_jax.dashboard`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mqsa_jax.checkpoint import LATEST, RunCheckpoints
from mqsa_jax.config import Config, read_run_config
from mqsa_jax.dashboard import MetricLogger, ProgressLog
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.errors import UserError
from mqsa_jax.hosts import HostShard, prepare_host_data
from mqsa_jax.model import MQSA
from mqsa_jax.packing import Batch, Packing
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.processes import stop_requested
from mqsa_jax.progress import EpochPartial, RunProgress
from mqsa_jax.rundir import RunDir
from mqsa_jax.runs import (
    check_resumable,
    checked_progress,
    enable_compilation_cache,
    evaluation_sample,
    make_evaluators,
)
from mqsa_jax.state import TrainState, init_state, logical_specs, make_optimizer
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
        self.evaluators = make_evaluators(self.model, data, config, partitioner, shard=shard)
        sample = evaluation_sample(config, shard.total_users)
        self.sample_evaluators = sample if sample is None else make_evaluators(
            self.model, data, config, partitioner, users=shard.local(sample), shard=shard)
        self._place = shard.placer(partitioner)

    def place(self, batch: Batch) -> Batch:
        """A host batch with its rows split over the mesh's ``data`` axis."""
        return jax.tree.map(self._place, batch)

    def train_epoch(self, state: TrainState, order: np.ndarray, progress: tqdm | None = None):
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
        for batch, count in self.shard.batches(self.packing, order, partial.batches, stop):
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

    def evaluate(self, params, final: bool = True) -> dict[str, dict[str, float]]:
        """Both splits' metrics: every user's, or the eval_users sample's (when not ``final``,
        or with ``final_eval="sample"``)."""
        sample = self.sample_evaluators is not None and (
            not final or self.config.eval.final_eval == "sample")
        metrics = {e.split: e.evaluate(params)
                   for e in (self.sample_evaluators if sample else self.evaluators)}
        return {**metrics, **({"eval_users": self.config.eval.eval_users} if sample else {})}


def train(config: Config, run_dir: Path, data_dir: Path | None = None, progress: bool | None = None,
          resume: bool = False, partitioner: Partitioner | None = None) -> dict:
    """Trains, evaluates after every ``eval_every`` epochs, checkpoints every epoch, and writes
    the run's outputs.  With ``resume``, continues from the run's latest complete checkpoint."""
    enable_compilation_cache()
    run = RunDir(run_dir)
    if resume:
        check_resumable(read_run_config(run_dir), config, run_dir)
    elif run.holds_run():
        raise UserError(f"{run_dir}: already holds a run; choose another --run-dir, "
                        "or continue it with --resume")
    partitioner = partitioner or Partitioner(rules=config.train.logical_axis_rules)
    data, shard = prepare_host_data(config, partitioner, data_dir)
    trainer = Trainer(config, data, partitioner, shard)
    primary = jax.process_index() == 0  # with many hosts, one writes the run's files
    with contextlib.ExitStack() as stack:
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run.exclusive())
            run.write_config(config.to_json())
            print(f"run directory: {run_dir}", file=sys.stderr)
        checkpoints = stack.enter_context(RunCheckpoints(run_dir))
        best = _train_epochs(config, run, trainer, checkpoints, resume, progress, primary)
        results = {"dataset": config.dataset, "best_epoch": best["epoch"] if best else None,
                   **({"best_step": best["step"]} if best and "step" in best else {}),
                   "valid": best["valid"] if best else {}, "test": best["test"] if best else {}}
        if primary:
            run.write_results(results)
    return results


def _resume_point(run: RunDir, trainer: Trainer, checkpoints: RunCheckpoints, state: TrainState,
                  primary: bool) -> tuple[TrainState, RunProgress | None]:
    """The state and progress of the run's latest checkpoint (None: there is none)."""
    if checkpoints.latest_epoch() is None:
        return state, None
    state, saved = checkpoints.restore(LATEST, state, fallback=True)
    progress = checked_progress(saved, trainer.data.num_items, run.path)
    if primary:
        where = f"at batch {progress.partial.batches} of" if progress.partial else "after"
        print(f"resuming {run.path} {where} epoch {progress.epoch}", file=sys.stderr)
    return state, progress


def _train_epochs(config: Config, run: RunDir, trainer: Trainer, checkpoints: RunCheckpoints,
                  resume: bool, progress: bool | None, primary: bool) -> dict | None:
    """The epoch loop; returns the best evaluated record.

    With ``max_steps`` or ``eval_every_steps`` (a run that counts steps), it also stops,
    evaluates and checkpoints inside an epoch; such a checkpoint holds the epoch's position (its
    shuffle and the batches done), and a resume continues from that very batch.
    """
    selection, train_config = config.eval.selection_metric, config.train
    counts_steps = bool(train_config.max_steps or train_config.eval_every_steps)
    state = trainer.init_state()
    shuffler = np.random.default_rng(config.seed)
    history, best, stale, first_epoch, partial = [], None, 0, 1, EpochPartial()
    saved = None
    if resume:
        state, saved = _resume_point(run, trainer, checkpoints, state, primary)
    if saved is not None:
        history, best, stale = saved.history, saved.best, saved.stale
        shuffler.bit_generator.state = saved.shuffler
        first_epoch = saved.epoch + 1
        if saved.partial:  # stopped inside that epoch: its shuffle is drawn again
            partial, first_epoch = saved.partial, saved.epoch
            shuffler.bit_generator.state = saved.epoch_shuffle

    batches = trainer.packing.num_batches(trainer.shard.total_users)
    step = int(state.step)
    with MetricLogger(run, config, history, primary) as metrics:
        for epoch in range(first_epoch, train_config.epochs + 1):
            if config.eval.patience and stale >= config.eval.patience:
                break
            # The loss shown is the previous epoch's: reading this epoch's would stall the
            # device.  tqdm's disable=None shows the bar on a terminal only; other hosts never.
            last_loss = f" (loss {history[-1]['loss']:.4f})" if history else ""
            disable = True if not primary else (None if progress is None else not progress)
            bar = tqdm(total=batches, initial=partial.batches, unit="batch", leave=False,
                       disable=disable, desc=f"epoch {epoch}/{train_config.epochs}{last_loss}")
            log = (ProgressLog(train_config.log_every_seconds, epoch, train_config.epochs,
                               batches) if primary and bar.disable else None)
            epoch_shuffle = shuffler.bit_generator.state
            order = shuffler.permutation(trainer.shard.total_users)
            while True:
                done = partial.batches
                stop = _next_stop(train_config, step, done, batches)
                state, partial = trainer.train_steps(state, order, partial, stop, bar, log)
                step += partial.batches - done
                end_of_epoch = partial.batches == batches
                finished = bool(train_config.max_steps) and step >= train_config.max_steps
                due = bool(train_config.eval_every_steps) and (
                    step % train_config.eval_every_steps == 0)
                if end_of_epoch or finished or due:
                    evaluate = due or finished or (end_of_epoch and (
                        epoch % config.eval.eval_every == 0 or epoch == train_config.epochs))
                    record = {"epoch": epoch, **({"step": step} if counts_steps else {}),
                              **{k: round(v, 6) for k, v in partial.means().items()},
                              "train_seconds": round(partial.seconds, 3),
                              "targets_per_second": round(partial.targets
                                                          / max(partial.seconds, 1e-9))}
                    is_best = False
                    if evaluate:
                        start = time.perf_counter()
                        last = finished or (end_of_epoch and epoch == train_config.epochs)
                        record.update(trainer.evaluate(state.params, final=last))
                        record["eval_seconds"] = round(time.perf_counter() - start, 3)
                        score = record["valid"][selection]
                        is_best = best is None or score > best["valid"][selection]
                        best, stale = (record, 0) if is_best else (best, stale + 1)
                    history.append(record)
                    start = time.perf_counter()
                    index = step if counts_steps else epoch  # checkpoints count steps then
                    checkpoints.save(index, state, RunProgress(
                        epoch, shuffler.bit_generator.state, history, best, stale,
                        config.to_json(), trainer.data.num_items,
                        None if end_of_epoch else partial,
                        None if end_of_epoch else epoch_shuffle).to_json(), is_best)
                    metrics.log(record, time.perf_counter() - start)
                    if stop_requested(index):
                        if primary:
                            print(f"SIGTERM: stopped after {'step' if counts_steps else 'epoch'}"
                                  f" {index}'s checkpoint; continue with train --resume "
                                  f"{run.path}", file=sys.stderr)
                        raise KeyboardInterrupt
                if end_of_epoch or finished:
                    break
            bar.close()
            partial = EpochPartial()
            if finished:
                break
            if config.eval.patience and stale >= config.eval.patience and primary:
                print(f"stopping early: no better valid {selection} in {stale} evaluations",
                      file=sys.stderr)
    return best


def _next_stop(train_config, step: int, done: int, batches: int) -> int:
    """Where the batches run to before the loop stops to evaluate or finish: the epoch's end,
    the next multiple of ``eval_every_steps``, or ``max_steps``, whichever comes first."""
    stop = batches
    if train_config.eval_every_steps:
        stop = min(stop, done + train_config.eval_every_steps
                   - step % train_config.eval_every_steps)
    if train_config.max_steps:
        stop = min(stop, done + max(train_config.max_steps - step, 0))
    return stop
