"""The training loop: epochs of packed batches, evaluation, checkpoints and the run's files.

The pieces it drives each have their own home: the run's model, steps, batches and evaluators
(:class:`mqsa_jax.trainer.Trainer`), the devices (:mod:`mqsa_jax.partitioning`), the
checkpoints (:mod:`mqsa_jax.checkpoint`) and their progress record (:mod:`mqsa_jax.progress`),
the run's files (:mod:`mqsa_jax.rundir`) and its metrics' sinks (:mod:`mqsa_jax.dashboard`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from mqsa_jax.checkpoint import LATEST, RunCheckpoints
from mqsa_jax.config import Config, read_run_config
from mqsa_jax.dashboard import MetricLogger, ProgressLog
from mqsa_jax.data.registry import catalogue_ids
from mqsa_jax.errors import UserError
from mqsa_jax.hosts import prepare_host_data
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.processes import stop_requested
from mqsa_jax.progress import EpochPartial, RunProgress, StepSchedule
from mqsa_jax.rundir import RunDir
from mqsa_jax.runs import check_resumable, checked_progress, enable_compilation_cache
from mqsa_jax.state import TrainState
from mqsa_jax.trainer import Trainer
from mqsa_jax.warm_start import warm_source, warm_state


def train(config: Config, run_dir: Path, data_dir: Path | None = None, progress: bool | None = None,
          resume: bool = False, partitioner: Partitioner | None = None,
          on_evaluation: Callable[[dict], None] | None = None) -> dict:
    """Trains, evaluates after every ``eval_every`` epochs, checkpoints every epoch, and writes
    the run's outputs.  With ``resume``, continues from the run's latest complete checkpoint.
    ``on_evaluation`` gets each evaluated record once it is checkpointed and logged (what it
    raises stops the run there, resumable: a search prunes a trial so)."""
    enable_compilation_cache()
    run = RunDir(run_dir)
    if resume:
        check_resumable(read_run_config(run_dir), config, run_dir)
    elif run.holds_run():
        raise UserError(f"{run_dir}: already holds a run; choose another --run-dir, "
                        "or continue it with --resume")
    warm = warm_source(config, data_dir) if config.train.init_from else None
    config_json = config.to_json()  # written to the run and into each checkpoint
    partitioner = partitioner or Partitioner(rules=config.train.logical_axis_rules)
    data, shard = prepare_host_data(config, partitioner, data_dir)
    item_ids = catalogue_ids(config.dataset, data_dir)
    trainer = Trainer(config, data, partitioner, shard)
    primary = jax.process_index() == 0  # with many hosts, one writes the run's files
    with contextlib.ExitStack() as stack:
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run.exclusive())
            run.write_config(config_json)
            run.write_item_ids(item_ids)
            print(f"run directory: {run_dir}", file=sys.stderr)
        checkpoints = stack.enter_context(RunCheckpoints(run_dir))
        state, saved = trainer.init_state(), None
        if resume:
            state, saved = _resume_point(run, trainer, checkpoints, state, primary)
        if saved is None and warm is not None:
            state, report = warm_state(state, warm, item_ids)
            if primary:
                run.record_provenance("init_from", report)
                print(f"warm start from {warm.run} ({warm.checkpoint} checkpoint, epoch "
                      f"{report['epoch']}): {report['items_copied']:,} item rows copied, "
                      f"{report['items_new']:,} new, {report['items_dropped']:,} dropped",
                      file=sys.stderr)
        best = _train_epochs(config, config_json, run, trainer, checkpoints, state, saved,
                             progress, primary, on_evaluation)
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


def _epoch_bars(epoch: int, epochs: int, batches: int, partial: EpochPartial, history: list,
                progress: bool | None, primary: bool,
                log_every_seconds: float) -> tuple[tqdm, ProgressLog | None]:
    """An epoch's progress bar on a terminal, or its progress lines elsewhere (primary only).
    The loss shown is the previous epoch's: reading this epoch's would stall the device."""
    last_loss = f" (loss {history[-1]['loss']:.4f})" if history else ""
    # tqdm's disable=None shows the bar on a terminal only; other hosts never.
    disable = True if not primary else (None if progress is None else not progress)
    bar = tqdm(total=batches, initial=partial.batches, unit="batch", leave=False,
               disable=disable, desc=f"epoch {epoch}/{epochs}{last_loss}")
    log = (ProgressLog(log_every_seconds, epoch, epochs, batches)
           if primary and bar.disable else None)
    return bar, log


def _train_epochs(config: Config, config_json: dict, run: RunDir, trainer: Trainer,
                  checkpoints: RunCheckpoints, state: TrainState, saved: RunProgress | None,
                  progress: bool | None, primary: bool,
                  on_evaluation: Callable[[dict], None] | None) -> dict | None:
    """The epoch loop from ``state`` (and ``saved``, a resumed run's progress); returns the
    best evaluated record.

    With ``max_steps`` or ``eval_every_steps`` (a run that counts steps), it also stops,
    evaluates and checkpoints inside an epoch; such a checkpoint holds the epoch's position (its
    shuffle and the batches done), and a resume continues from that very batch.
    """
    selection, epochs, patience = (config.eval.selection_metric, config.train.epochs,
                                   config.eval.patience)
    schedule = StepSchedule(config.train.max_steps, config.train.eval_every_steps)
    shuffler = np.random.default_rng(config.seed)
    history, best, stale, first_epoch, partial = [], None, 0, 1, EpochPartial()
    if saved is not None:
        history, best, stale = saved.history, saved.best, saved.stale
        shuffler.bit_generator.state = saved.shuffler
        first_epoch = saved.epoch + 1
        trainer.shapes.restore(saved.step_shapes)
        if saved.partial:  # stopped inside that epoch: its shuffle is drawn again
            partial, first_epoch = saved.partial, saved.epoch
            shuffler.bit_generator.state = saved.epoch_shuffle

    batches = trainer.packing.num_batches(trainer.shard.total_users)
    step = int(state.step)
    with MetricLogger(run, config, history, primary) as metrics:
        for epoch in range(first_epoch, epochs + 1):
            if patience and stale >= patience:
                break
            bar, log = _epoch_bars(epoch, epochs, batches, partial, history, progress, primary,
                                   config.train.log_every_seconds)
            epoch_shuffle = shuffler.bit_generator.state
            order = shuffler.permutation(trainer.shard.total_users)
            while True:
                done = partial.batches
                state, partial = trainer.train_steps(
                    state, order, partial, schedule.next_stop(step, done, batches), bar, log)
                step += partial.batches - done
                end_of_epoch, finished = partial.batches == batches, schedule.finished(step)
                due = schedule.due(step)
                if end_of_epoch or finished or due:
                    record = {"epoch": epoch, **({"step": step} if schedule.counts_steps else {}),
                              **{k: round(v, 6) for k, v in partial.means().items()},
                              "train_seconds": round(partial.seconds, 3),
                              "targets_per_second": round(partial.targets
                                                          / max(partial.seconds, 1e-9))}
                    is_best = False
                    if due or finished or (end_of_epoch and (
                            epoch % config.eval.eval_every == 0 or epoch == epochs)):
                        start = time.perf_counter()
                        last = finished or (end_of_epoch and epoch == epochs)
                        record.update(trainer.evaluate(state.params, final=last))
                        record["eval_seconds"] = round(time.perf_counter() - start, 3)
                        score = record["valid"][selection]
                        is_best = best is None or score > best["valid"][selection]
                        best, stale = (record, 0) if is_best else (best, stale + 1)
                    history.append(record)
                    start = time.perf_counter()
                    index = step if schedule.counts_steps else epoch  # what checkpoints count
                    checkpoints.save(index, state, RunProgress(
                        epoch, shuffler.bit_generator.state, history, best, stale, config_json,
                        trainer.data.num_items, None if end_of_epoch else partial,
                        None if end_of_epoch else epoch_shuffle,
                        trainer.shapes.to_json()).to_json(), is_best)
                    metrics.log(record, time.perf_counter() - start)
                    if on_evaluation is not None and "valid" in record:
                        on_evaluation(record)
                    if stop_requested(index):
                        if primary:
                            print(f"SIGTERM: stopped after "
                                  f"{'step' if schedule.counts_steps else 'epoch'} {index}'s "
                                  f"checkpoint; continue with train --resume {run.path}",
                                  file=sys.stderr)
                        raise KeyboardInterrupt
                if end_of_epoch or finished:
                    break
            bar.close()
            partial = EpochPartial()
            if finished:
                break
            if patience and stale >= patience and primary:
                print(f"stopping early: no better valid {selection} in {stale} evaluations",
                      file=sys.stderr)
    return best
