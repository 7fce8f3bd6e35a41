"""Training: state, the jitted train step, and the one training loop with per-epoch evaluation."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm import tqdm

from mqsa_jax.checkpoint import LATEST, RunCheckpoints
from mqsa_jax.config import Config, config_from_json
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import SequenceData, build_sequence_data
from mqsa_jax.errors import UserError
from mqsa_jax.evaluation import RankingEvaluator
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.losses import TeacherWeights, fused_losses, l2_penalty, ted_students
from mqsa_jax.model import MQSA, item_table, lookup_rows
from mqsa_jax.packing import Batch, Packing
from mqsa_jax.partitioning import Partitioner

SELECTION_METRIC = "NDCG@20"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    dropout_key: jax.Array  # raw key data (uint32), so that checkpoints store it as an array


@flax.struct.dataclass
class TrainArrays:
    """Device-resident training data besides the batches: the TED teacher's rows."""

    teacher: TeacherWeights


def make_optimizer(config: Config) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def init_state(model: MQSA, optimizer, config: Config) -> TrainState:
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    dummy = jnp.full((1, config.max_len), model.num_items, jnp.int32)
    params = model.init({"params": init_key}, dummy, deterministic=True)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      dropout_key=jax.random.key_data(dropout_key))


def train_arrays(data: SequenceData, config: Config) -> TrainArrays:
    return TrainArrays(teacher=TeacherWeights.from_transitions(data.transitions, config.tau))


def make_loss_fn(model: MQSA, config: Config, partitioner: Partitioner | None = None):
    """The loss of a batch; the partitioner says how the item table is split over devices."""
    packed_lookup, slices = None, 1
    if partitioner is not None and partitioner.model > 1:
        packed_lookup = functools.partial(partitioner.item_lookup, split=False)
        slices = partitioner.model
    distill = config.lambda_kd > 0

    def loss_fn(params, batch: Batch, key, teacher):
        """The mean losses of a packed batch's real targets (``mqsa_jax.packing``)."""
        real = batch.segments.reshape(-1) > 0
        positions = jnp.nonzero(real, size=batch.capacity, fill_value=0)[0]
        weights = (jnp.arange(batch.capacity) < real.sum()).astype(jnp.float32)
        student_key, model_key = jax.random.split(key)
        states = model.apply(params, batch.items, deterministic=False, rngs={"dropout": model_key},
                             segments=batch.segments, positions=batch.positions)
        states = states.reshape(-1, config.hidden)[positions]
        table = item_table(params)
        students = teacher_rows = None
        if distill:
            heads = batch.items.reshape(-1)[positions]
            students = ted_students((packed_lookup or lookup_rows)(table, heads), student_key,
                                    config.dropout, config.tau)
            teacher_rows = teacher.rows(heads, weights, batch.pair_capacity)
        rec, kd = fused_losses(states, batch.targets.reshape(-1)[positions], weights, table,
                               students, teacher_rows, config.logits_chunk, packed_lookup, slices)
        loss = rec + config.lambda_kd * kd + config.l2_reg * l2_penalty(params)
        return loss, {"loss": loss, "loss_rec": rec, "loss_kd": kd}

    return loss_fn


def make_train_step(model: MQSA, optimizer, config: Config,
                    partitioner: Partitioner | None = None, state_shardings=None):
    """The jitted step; with a partitioner, its output state keeps the input state's
    placement (``state_shardings``)."""
    loss_fn = make_loss_fn(model, config, partitioner)
    out_shardings = None if partitioner is None else (state_shardings, partitioner.replicated)

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=out_shardings)
    def train_step(state: TrainState, arrays: TrainArrays, batch: Batch):
        """One Adam step on a packed batch (``mqsa_jax.packing``)."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
        grads, losses = jax.grad(loss_fn, has_aux=True)(state.params, batch, key, arrays.teacher)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), losses

    return train_step


def make_encode_last(model: MQSA):
    """The state at the last position of each row: what the next item is predicted from."""
    return lambda params, inputs: model.apply(params, inputs, deterministic=True)[:, -1]


def make_evaluators(model: MQSA, data: SequenceData, config: Config,
                    partitioner: Partitioner | None = None,
                    splits=("valid", "test")) -> list[RankingEvaluator]:
    """Full-ranking evaluators of ``splits``; with a partitioner, batches are split over its
    data axis and ranking is per item slice of its model axis."""
    placement = {} if partitioner is None else {"place": partitioner.place_batch,
                                                "mesh": partitioner.mesh}
    return [RankingEvaluator(split, data, make_encode_last(model), config.eval_batch_size,
                             **placement) for split in splits]


class Trainer:
    """Owns the data, model, step functions and evaluators of one run."""

    def __init__(self, config: Config, data: SequenceData, partitioner: Partitioner | None = None):
        self.config, self.data = config, data
        self.partitioner = partitioner = partitioner or Partitioner()
        partitioner.check_sizes(data.num_items, config.batch_size, config.eval_batch_size)
        self.model = MQSA.from_config(config, data.num_items, partitioner.item_lookup)
        self.optimizer = make_optimizer(config)
        self.state_shardings = partitioner.state_shardings(
            jax.eval_shape(lambda: init_state(self.model, self.optimizer, config)))
        self.train_step = make_train_step(self.model, self.optimizer, config, partitioner,
                                          self.state_shardings)
        host_arrays = train_arrays(data, config)
        self.arrays = partitioner.replicate(host_arrays)
        self.packing = Packing(data.train_inputs, data.train_targets,
                               _pairs_per_user(data, host_arrays.teacher, config),
                               data.padding_id, config.batch_size, partitioner.data)
        self.evaluators = make_evaluators(self.model, data, config, partitioner)

    def init_state(self) -> TrainState:
        host_state = jax.device_get(init_state(self.model, self.optimizer, self.config))
        return self.partitioner.place(host_state, self.state_shardings)

    def place(self, batch: Batch) -> Batch:
        """A host batch with its rows split over the mesh's ``data`` axis."""
        return jax.tree.map(self.partitioner.place_batch, batch)

    def train_epoch(self, state: TrainState, order: np.ndarray, progress: tqdm | None = None):
        """One pass over the users in ``order``; returns the state and the mean batch losses."""
        totals, steps, seen, start = None, 0, 0, time.perf_counter()
        for batch, count in self.packing.batches(order):
            state, losses = self.train_step(state, self.arrays, self.place(batch))
            totals = losses if totals is None else jax.tree.map(jnp.add, totals, losses)
            steps, seen = steps + 1, seen + count
            if progress is not None:
                progress.update(1)
                progress.set_postfix(targets_per_s=f"{seen / (time.perf_counter() - start):,.0f}",
                                     refresh=False)
        return state, {k: float(v) / steps for k, v in totals.items()}

    def evaluate(self, params) -> dict[str, dict[str, float]]:
        return {e.split: e.evaluate(params) for e in self.evaluators}


def _pairs_per_user(data: SequenceData, teacher: TeacherWeights, config: Config) -> np.ndarray:
    """[U] TED teacher pairs of each user: the successors of the items at its real target
    positions (zeros without TED)."""
    if config.lambda_kd == 0:
        return np.zeros(data.num_users, np.int64)
    real = data.train_targets != data.padding_id
    successors = np.append(teacher.successor_counts, 0)  # the padding id has none
    return np.where(real, successors[data.train_inputs], 0).sum(axis=1)


def prepare_data(config: Config, data_dir: Path | None = None) -> SequenceData:
    if jax.process_count() > 1:
        # The first use of a dataset prepares its TFDS files: one process does, on storage the
        # hosts share, while the others wait (on separate disks each host then prepares its own).
        if jax.process_index() == 0:
            registry.load_dataset(config.dataset, data_dir)
        multihost_utils.sync_global_devices("mqsa-jax: dataset prepared")
    dataset = registry.load_dataset(config.dataset, data_dir)
    return build_sequence_data(dataset, config.max_len, config.time_span)


def enable_compilation_cache() -> None:
    """Keeps compiled steps on disk: a second run of the same shapes starts at once."""
    if jax.config.jax_compilation_cache_dir is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mqsa-jax" / "jax"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_config(run_dir: Path) -> Config:
    """The resolved config of an existing run directory."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a training run directory (no config.json)")
    try:
        return config_from_json(path)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable run config ({e})") from None


def check_resumable(stored: Config, requested: Config, run_dir: Path) -> None:
    """Only the number of epochs may change when a run is resumed."""
    old, new = stored.to_json(), requested.to_json()
    changed = [f"{k} ({old[k]} -> {new[k]})" for k in old if k != "epochs" and old[k] != new[k]]
    if changed:
        raise UserError(f"cannot resume {run_dir} with a different config: {', '.join(changed)}; "
                        "only epochs may change")


def train(config: Config, run_dir: Path, data_dir: Path | None = None,
          progress: bool | None = None, resume: bool = False,
          partitioner: Partitioner | None = None) -> dict:
    """Trains, evaluates after every ``eval_every`` epochs, checkpoints every epoch, and writes
    the run's outputs.  With ``resume``, continues from the run's latest complete checkpoint."""
    enable_compilation_cache()
    if resume:
        check_resumable(run_config(run_dir), config, run_dir)
    elif (run_dir / "config.json").exists():
        raise UserError(f"{run_dir}: already holds a run; choose another --run-dir, "
                        "or continue it with --resume")
    trainer = Trainer(config, prepare_data(config, data_dir), partitioner)
    primary = jax.process_index() == 0  # with many hosts, one writes the run's files
    with contextlib.ExitStack() as stack:
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_exclusive(run_dir))
            write_json_atomic(run_dir / "config.json", config.to_json())
            print(f"run directory: {run_dir}", file=sys.stderr)
        checkpoints = stack.enter_context(RunCheckpoints(run_dir))
        best = _train_epochs(config, run_dir, trainer, checkpoints, resume, progress, primary)
        results = {"dataset": config.dataset, "best_epoch": best["epoch"] if best else None,
                   "valid": best["valid"] if best else {}, "test": best["test"] if best else {}}
        if primary:
            write_json_atomic(run_dir / "results.json", results)
    return results


@contextlib.contextmanager
def _exclusive(run_dir: Path):
    """Holds the run directory's lock: two processes training one run would corrupt it."""
    with open(run_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{run_dir}: another process is training this run") from None
        yield


def _train_epochs(config: Config, run_dir: Path, trainer: Trainer, checkpoints: RunCheckpoints,
                  resume: bool, progress: bool | None, primary: bool) -> dict | None:
    """The epoch loop; returns the best evaluated record."""
    metrics_path = run_dir / "metrics.jsonl"
    state = trainer.init_state()
    shuffler = np.random.default_rng(config.seed)
    history, best, stale, first_epoch = [], None, 0, 1
    if resume and checkpoints.latest_epoch() is not None:
        state, saved = checkpoints.restore(LATEST, state, fallback=True)
        shuffler.bit_generator.state = saved["shuffler"]
        history, best, stale = saved["history"], saved["best"], saved["stale"]
        first_epoch = saved["epoch"] + 1
        if primary:
            print(f"resuming {run_dir} after epoch {saved['epoch']}", file=sys.stderr)
    if primary:
        # Drops the epochs newer than the checkpoint.
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    steps_per_epoch = -(-trainer.data.num_users // config.batch_size)
    for epoch in range(first_epoch, config.epochs + 1):
        if config.patience and stale >= config.patience:
            break
        # The loss shown is the previous epoch's: reading this epoch's would stall the device.
        last_loss = f" (loss {history[-1]['loss']:.4f})" if history else ""
        # tqdm: disable=None shows the bar on a terminal only; other hosts never show one.
        disable = True if not primary else (None if progress is None else not progress)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}{last_loss}",
                   unit="batch", leave=False, disable=disable)
        start = time.perf_counter()
        order = shuffler.permutation(trainer.data.num_users)
        state, losses = trainer.train_epoch(state, order, bar)
        train_seconds = time.perf_counter() - start
        bar.close()
        record = {"epoch": epoch, **{k: round(v, 6) for k, v in losses.items()},
                  "train_seconds": round(train_seconds, 3)}
        is_best = False
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            start = time.perf_counter()
            record.update(trainer.evaluate(state.params))
            record["eval_seconds"] = round(time.perf_counter() - start, 3)
            score = record["valid"][SELECTION_METRIC]
            is_best = best is None or score > best["valid"][SELECTION_METRIC]
            best, stale = (record, 0) if is_best else (best, stale + 1)
        history.append(record)
        if primary:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        start = time.perf_counter()
        checkpoints.save(epoch, state, {
            "epoch": epoch, "shuffler": shuffler.bit_generator.state, "history": history,
            "best": best, "stale": stale, "config": config.to_json()}, is_best)
        if primary:
            print(_summary_line(record, config.epochs, time.perf_counter() - start),
                  file=sys.stderr, flush=True)
        if config.patience and stale >= config.patience and primary:
            print(f"stopping early: no better valid {SELECTION_METRIC} in {stale} evaluations",
                  file=sys.stderr)
    return best


def _summary_line(record: dict, epochs: int, checkpoint_seconds: float) -> str:
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f} "
            f"(rec {record['loss_rec']:.4f}, kd {record['loss_kd']:.4f})  "
            f"{record['train_seconds']:.1f} s, checkpoint {checkpoint_seconds:.2f} s")
    if "valid" in record:
        line += (f"  valid {SELECTION_METRIC} {record['valid'][SELECTION_METRIC]:.4f}"
                 f"  test {SELECTION_METRIC} {record['test'][SELECTION_METRIC]:.4f}"
                 f"  eval {record['eval_seconds']:.1f} s")
    return line


def restore_trained(run_dir: Path, which: str, config: Config, num_items: int):
    """The train state and progress saved in a run's ``which`` (best or latest) checkpoint."""
    model = MQSA.from_config(config, num_items)
    template = init_state(model, make_optimizer(config), config)
    with RunCheckpoints(run_dir, read_only=True) as checkpoints:
        state, progress = checkpoints.restore(which, template)
    return model, state, progress


def evaluate_run(run_dir: Path, which: str = "best", splits=("valid", "test"),
                 data_dir: Path | None = None) -> dict:
    """Re-evaluates a checkpoint of a run on the run's dataset."""
    config = run_config(run_dir)
    data = prepare_data(config, data_dir)
    model, state, progress = restore_trained(run_dir, which, config, data.num_items)
    result = {"checkpoint": which, "epoch": progress["epoch"]}
    for evaluator in make_evaluators(model, data, config, splits=splits):
        result[evaluator.split] = evaluator.evaluate(state.params)
    return result
