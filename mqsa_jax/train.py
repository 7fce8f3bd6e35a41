"""The training loop: epochs of packed batches, evaluation, checkpoints and the run's files.

The pieces it drives each have their own home: the step (:mod:`mqsa_jax.steps`), the batches
(:mod:`mqsa_jax.packing`), the evaluators (:mod:`mqsa_jax.evaluation`), the devices
(:mod:`mqsa_jax.partitioning`), the checkpoints (:mod:`mqsa_jax.checkpoint`) and the run
directory (:mod:`mqsa_jax.runs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mqsa_jax.checkpoint import LATEST, RunCheckpoints
from mqsa_jax.config import Config, read_run_config
from mqsa_jax.dashboard import ProgressLog, TensorBoardLog, summary_line
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.errors import UserError
from mqsa_jax.hosts import HostShard, prepare_host_data
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.model import MQSA
from mqsa_jax.packing import Batch, Packing
from mqsa_jax.partitioning import Partitioner, stop_requested
from mqsa_jax.runs import (
    check_catalogue,
    check_resumable,
    enable_compilation_cache,
    evaluation_sample,
    exclusive,
    make_evaluators,
)
from mqsa_jax.state import TrainState, init_state, logical_specs, make_optimizer
from mqsa_jax.steps import TrainArrays, make_train_step


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
        self.state_shardings = partitioner.state_shardings(
            logical_specs(self.model, self.optimizer, config))
        self.train_step = make_train_step(self.model, self.optimizer, config, partitioner,
                                          self.state_shardings)
        self.arrays = partitioner.replicate(TrainArrays.from_data(data, config))
        self.packing = Packing(data, config.train.batch_size, partitioner.data // shard.count)
        self.evaluators = make_evaluators(self.model, data, config, partitioner, shard=shard)
        sample = evaluation_sample(config, shard.total_users)
        self.sample_evaluators = sample if sample is None else make_evaluators(
            self.model, data, config, partitioner, users=shard.local(sample), shard=shard)
        self._place = shard.placer(partitioner)

    def init_state(self) -> TrainState:
        host_state = jax.device_get(init_state(self.model, self.optimizer, self.config))
        return self.partitioner.place(host_state, self.state_shardings)

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
        with self.partitioner.activate():
            for batch, count in self.shard.batches(self.packing, order, partial.batches, stop):
                state, losses = self.train_step(state, self.arrays, self.place(batch))
                totals = losses if totals is None else jax.tree.map(jnp.add, totals, losses)
                steps, seen = steps + 1, seen + count
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        targets_per_s=f"{seen / (time.perf_counter() - start):,.0f}",
                        refresh=False)
                if log is not None:
                    log.step(steps, seen, losses)
        return state, EpochPartial(steps, totals, partial.seconds + time.perf_counter() - start,
                                   partial.targets + seen)

    def evaluate(self, params, final: bool = True) -> dict[str, dict[str, float]]:
        """Both splits' metrics: every user's, or the eval_users sample's (when not ``final``,
        or with ``final_eval="sample"``)."""
        sample = self.sample_evaluators is not None and (
            not final or self.config.eval.final_eval == "sample")
        with self.partitioner.activate():
            metrics = {e.split: e.evaluate(params)
                       for e in (self.sample_evaluators if sample else self.evaluators)}
        return {**metrics, **({"eval_users": self.config.eval.eval_users} if sample else {})}


def train(config: Config, run_dir: Path, data_dir: Path | None = None, progress: bool | None = None,
          resume: bool = False, partitioner: Partitioner | None = None) -> dict:
    """Trains, evaluates after every ``eval_every`` epochs, checkpoints every epoch, and writes
    the run's outputs.  With ``resume``, continues from the run's latest complete checkpoint."""
    enable_compilation_cache()
    if resume:
        check_resumable(read_run_config(run_dir), config, run_dir)
    elif (run_dir / "config.json").exists():
        raise UserError(f"{run_dir}: already holds a run; choose another --run-dir, "
                        "or continue it with --resume")
    partitioner = partitioner or Partitioner(rules=config.train.logical_axis_rules)
    data, shard = prepare_host_data(config, partitioner, data_dir)
    trainer = Trainer(config, data, partitioner, shard)
    primary = jax.process_index() == 0  # with many hosts, one writes the run's files
    with contextlib.ExitStack() as stack:
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive(run_dir))
            write_json_atomic(run_dir / "config.json", config.to_json())
            print(f"run directory: {run_dir}", file=sys.stderr)
        checkpoints = stack.enter_context(RunCheckpoints(run_dir))
        best = _train_epochs(config, run_dir, trainer, checkpoints, resume, progress, primary)
        results = {"dataset": config.dataset, "best_epoch": best["epoch"] if best else None,
                   **({"best_step": best["step"]} if best and "step" in best else {}),
                   "valid": best["valid"] if best else {}, "test": best["test"] if best else {}}
        if primary:
            write_json_atomic(run_dir / "results.json", results)
    return results


def _train_epochs(config: Config, run_dir: Path, trainer: Trainer, checkpoints: RunCheckpoints,
                  resume: bool, progress: bool | None, primary: bool) -> dict | None:
    """The epoch loop; returns the best evaluated record.

    With ``max_steps`` or ``eval_every_steps`` (a run that counts steps), it also stops,
    evaluates and checkpoints inside an epoch; such a checkpoint holds the epoch's position (its
    shuffle and the batches done), and a resume continues from that very batch.
    """
    metrics_path = run_dir / "metrics.jsonl"
    selection, train_config = config.eval.selection_metric, config.train
    counts_steps = bool(train_config.max_steps or train_config.eval_every_steps)
    state = trainer.init_state()
    shuffler = np.random.default_rng(config.seed)
    history, best, stale, first_epoch, partial = [], None, 0, 1, EpochPartial()
    if resume and checkpoints.latest_epoch() is not None:
        state, saved = checkpoints.restore(LATEST, state, fallback=True)
        check_catalogue(saved, trainer.data.num_items, run_dir)
        shuffler.bit_generator.state = saved["shuffler"]
        history, best, stale = saved["history"], saved["best"], saved["stale"]
        first_epoch = saved["epoch"] + 1
        if saved.get("partial"):  # stopped inside that epoch: its shuffle is drawn again
            partial, first_epoch = EpochPartial.from_json(saved["partial"]), saved["epoch"]
            shuffler.bit_generator.state = saved["partial"]["shuffle"]
        if primary:
            where = f"at batch {partial.batches} of" if partial.batches else "after"
            print(f"resuming {run_dir} {where} epoch {saved['epoch']}", file=sys.stderr)
    board = contextlib.nullcontext()
    if primary:
        # Drops the epochs newer than the checkpoint, here and in the TensorBoard files.
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        board = TensorBoardLog(run_dir, config, history, selection)

    batches = trainer.packing.num_batches(trainer.shard.total_users)
    step = int(state.step)
    with board:
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
                    if primary:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                        board.append(record)
                    start = time.perf_counter()
                    index = step if counts_steps else epoch  # checkpoints count steps then
                    checkpoints.save(index, state, {
                        "epoch": epoch, "shuffler": shuffler.bit_generator.state,
                        "history": history, "best": best, "stale": stale,
                        "config": config.to_json(), "num_items": trainer.data.num_items,
                        "partial": None if end_of_epoch else {**partial.to_json(),
                                                              "shuffle": epoch_shuffle}},
                        is_best)
                    if primary:
                        print(summary_line(record, train_config.epochs,
                                            time.perf_counter() - start, selection),
                              file=sys.stderr, flush=True)
                    if stop_requested(index):
                        if primary:
                            print(f"SIGTERM: stopped after {'step' if counts_steps else 'epoch'}"
                                  f" {index}'s checkpoint; continue with train --resume "
                                  f"{run_dir}", file=sys.stderr)
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


@dataclasses.dataclass(frozen=True)
class EpochPartial:
    """How far an epoch has gone: its batches done, their summed losses (device scalars), and
    its training seconds and targets."""

    batches: int = 0
    totals: dict | None = None
    seconds: float = 0.0
    targets: int = 0

    def means(self) -> dict[str, float]:
        """The mean batch losses (none before a batch)."""
        return {k: float(v) / self.batches for k, v in (self.totals or {}).items()}

    def to_json(self) -> dict:
        return {"batches": self.batches,
                "totals": {k: float(v) for k, v in (self.totals or {}).items()},
                "seconds": self.seconds, "targets": self.targets}

    @classmethod
    def from_json(cls, saved: dict) -> EpochPartial:
        # float32, as the device summed them: the sums go on exactly as without the stop.
        return cls(saved["batches"], {k: np.float32(v) for k, v in saved["totals"].items()},
                   saved["seconds"], saved["targets"])
