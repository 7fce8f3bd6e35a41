"""The training loop: epochs of packed batches, evaluation, checkpoints and the run's files.

The pieces it drives each have their own home: the step (:mod:`mqsa_jax.steps`), the batches
(:mod:`mqsa_jax.packing`), the evaluators (:mod:`mqsa_jax.evaluation`), the devices
(:mod:`mqsa_jax.partitioning`), the checkpoints (:mod:`mqsa_jax.checkpoint`) and the run
directory (:mod:`mqsa_jax.runs`).
"""

from __future__ import annotations

import contextlib
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
from mqsa_jax.dashboard import TensorBoardLog
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.errors import UserError
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.model import MQSA
from mqsa_jax.packing import Batch, Packing
from mqsa_jax.partitioning import Partitioner, stop_requested
from mqsa_jax.runs import (
    check_catalogue,
    check_resumable,
    enable_compilation_cache,
    exclusive,
    make_evaluators,
    prepare_data,
)
from mqsa_jax.state import TrainState, init_state, logical_specs, make_optimizer
from mqsa_jax.steps import TrainArrays, make_train_step


class Trainer:
    """Owns the data, model, step functions and evaluators of one run."""

    def __init__(self, config: Config, data: SequenceData, partitioner: Partitioner | None = None):
        self.config, self.data = config, data
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
        self.packing = Packing(data.train_inputs, data.train_targets, data.padding_id,
                               config.train.batch_size, partitioner.data)
        self.evaluators = make_evaluators(self.model, data, config, partitioner)
        self.targets_per_epoch = int((data.train_targets != data.padding_id).sum())

    def init_state(self) -> TrainState:
        host_state = jax.device_get(init_state(self.model, self.optimizer, self.config))
        return self.partitioner.place(host_state, self.state_shardings)

    def place(self, batch: Batch) -> Batch:
        """A host batch with its rows split over the mesh's ``data`` axis."""
        return jax.tree.map(self.partitioner.place_batch, batch)

    def train_epoch(self, state: TrainState, order: np.ndarray, progress: tqdm | None = None):
        """One pass over the users in ``order``; returns the state and the mean batch losses."""
        totals, steps, seen, start = None, 0, 0, time.perf_counter()
        with self.partitioner.activate():
            for batch, count in self.packing.batches(order):
                state, losses = self.train_step(state, self.arrays, self.place(batch))
                totals = losses if totals is None else jax.tree.map(jnp.add, totals, losses)
                steps, seen = steps + 1, seen + count
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        targets_per_s=f"{seen / (time.perf_counter() - start):,.0f}",
                        refresh=False)
        return state, {k: float(v) / steps for k, v in totals.items()}

    def evaluate(self, params) -> dict[str, dict[str, float]]:
        with self.partitioner.activate():
            return {e.split: e.evaluate(params) for e in self.evaluators}


def train(config: Config, run_dir: Path, data_dir: Path | None = None,
          progress: bool | None = None, resume: bool = False,
          partitioner: Partitioner | None = None) -> dict:
    """Trains, evaluates after every ``eval_every`` epochs, checkpoints every epoch, and writes
    the run's outputs.  With ``resume``, continues from the run's latest complete checkpoint."""
    enable_compilation_cache()
    if resume:
        check_resumable(read_run_config(run_dir), config, run_dir)
    elif (run_dir / "config.json").exists():
        raise UserError(f"{run_dir}: already holds a run; choose another --run-dir, "
                        "or continue it with --resume")
    trainer = Trainer(config, prepare_data(config, data_dir), partitioner)
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
                   "valid": best["valid"] if best else {}, "test": best["test"] if best else {}}
        if primary:
            write_json_atomic(run_dir / "results.json", results)
    return results


def _train_epochs(config: Config, run_dir: Path, trainer: Trainer, checkpoints: RunCheckpoints,
                  resume: bool, progress: bool | None, primary: bool) -> dict | None:
    """The epoch loop; returns the best evaluated record."""
    metrics_path = run_dir / "metrics.jsonl"
    selection = config.eval.selection_metric
    state = trainer.init_state()
    shuffler = np.random.default_rng(config.seed)
    history, best, stale, first_epoch = [], None, 0, 1
    if resume and checkpoints.latest_epoch() is not None:
        state, saved = checkpoints.restore(LATEST, state, fallback=True)
        check_catalogue(saved, trainer.data.num_items, run_dir)
        shuffler.bit_generator.state = saved["shuffler"]
        history, best, stale = saved["history"], saved["best"], saved["stale"]
        first_epoch = saved["epoch"] + 1
        if primary:
            print(f"resuming {run_dir} after epoch {saved['epoch']}", file=sys.stderr)
    board = contextlib.nullcontext()
    if primary:
        # Drops the epochs newer than the checkpoint, here and in the TensorBoard files.
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        board = TensorBoardLog(run_dir, config, history, selection)

    steps_per_epoch = -(-trainer.data.num_users // config.train.batch_size)
    with board:
        for epoch in range(first_epoch, config.train.epochs + 1):
            if config.eval.patience and stale >= config.eval.patience:
                break
            # The loss shown is the previous epoch's: reading this epoch's would stall the
            # device.  tqdm's disable=None shows the bar on a terminal only; other hosts never.
            last_loss = f" (loss {history[-1]['loss']:.4f})" if history else ""
            disable = True if not primary else (None if progress is None else not progress)
            bar = tqdm(total=steps_per_epoch, unit="batch", leave=False, disable=disable,
                       desc=f"epoch {epoch}/{config.train.epochs}{last_loss}")
            start = time.perf_counter()
            order = shuffler.permutation(trainer.data.num_users)
            state, losses = trainer.train_epoch(state, order, bar)
            train_seconds = time.perf_counter() - start
            bar.close()
            record = {"epoch": epoch, **{k: round(v, 6) for k, v in losses.items()},
                      "train_seconds": round(train_seconds, 3),
                      "targets_per_second": round(trainer.targets_per_epoch / train_seconds)}
            is_best = False
            if epoch % config.eval.eval_every == 0 or epoch == config.train.epochs:
                start = time.perf_counter()
                record.update(trainer.evaluate(state.params))
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
            checkpoints.save(epoch, state, {
                "epoch": epoch, "shuffler": shuffler.bit_generator.state, "history": history,
                "best": best, "stale": stale, "config": config.to_json(),
                "num_items": trainer.data.num_items}, is_best)
            if primary:
                print(_summary_line(record, config.train.epochs, time.perf_counter() - start,
                                    selection), file=sys.stderr, flush=True)
            if config.eval.patience and stale >= config.eval.patience and primary:
                print(f"stopping early: no better valid {selection} in {stale} evaluations",
                      file=sys.stderr)
            if stop_requested(epoch):
                if primary:
                    print(f"SIGTERM: stopped after epoch {epoch}'s checkpoint; continue with "
                          f"train --resume {run_dir}", file=sys.stderr)
                raise KeyboardInterrupt
    return best


def _summary_line(record: dict, epochs: int, checkpoint_seconds: float, selection: str) -> str:
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f} "
            f"(rec {record['loss_rec']:.4f}, kd {record['loss_kd']:.4f})  "
            f"{record['train_seconds']:.1f} s, checkpoint {checkpoint_seconds:.2f} s")
    if "valid" in record:
        line += (f"  valid {selection} {record['valid'][selection]:.4f}"
                 f"  test {selection} {record['test'][selection]:.4f}"
                 f"  eval {record['eval_seconds']:.1f} s")
    return line
