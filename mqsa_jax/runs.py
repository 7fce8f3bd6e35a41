"""A run's data, its checkpoints restored, and its evaluation (its files:
:mod:`mqsa_jax.rundir`).  Everything here serves training, evaluation and serving alike,
and imports nothing of training: ``mqsa_jax.recommend`` restores a run through this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.experimental import multihost_utils

from mqsa_jax.checkpoint import RunCheckpoints
from mqsa_jax.config import Config, read_run_config
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import SequenceData, build_sequence_data
from mqsa_jax.data.dataset import Dataset
from mqsa_jax.errors import UserError
from mqsa_jax.evaluation import RankingEvaluator
from mqsa_jax.io import atomic_output
from mqsa_jax.model import MQSA
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.progress import RunProgress
from mqsa_jax.state import TrainState, init_state, make_optimizer

if TYPE_CHECKING:  # hosts builds on this module
    from mqsa_jax.hosts import HostShard

# What a resumed run may change: none changes what is trained nor any rank.
RESUMABLE_CHANGES = ("epochs", "max_steps", "eval_batch_size", "log_every_seconds",
                     "final_eval")
# eval_users changes which users periodic evaluations rank, not what is trained; it is kept
# fixed all the same, so that a run's periodic figures compare with one another.


def check_resumable(stored: Config, requested: Config, run_dir: Path) -> None:
    """Only :data:`RESUMABLE_CHANGES` may change when a run is resumed."""
    old, new = stored.flat(), requested.flat()
    changed = [f"{k} ({old[k]} -> {new[k]})" for k in old
               if k not in RESUMABLE_CHANGES and old[k] != new[k]]
    if changed:
        raise UserError(f"cannot resume {run_dir} with a different config: {', '.join(changed)}; "
                        f"only {', '.join(RESUMABLE_CHANGES)} may change")


def load_run_dataset(config: Config, data_dir: Path | None = None,
                     shard: tuple[int, int] = (0, 1)) -> Dataset:
    """The config's dataset (``shard``: only that share of its users, see
    :func:`mqsa_jax.data.registry.load_dataset`), prepared once however many processes run."""
    if jax.process_count() > 1:
        # The first use of a dataset prepares its TFDS files: one process does, on storage the
        # hosts share, while the others wait (on separate disks each host then prepares its own).
        if jax.process_index() == 0:
            registry.prepare_dataset(config.dataset, data_dir)
        multihost_utils.sync_global_devices("mqsa-jax: dataset prepared")
    return registry.load_dataset(config.dataset, data_dir, shard)


def sequence_data(config: Config, dataset: Dataset) -> SequenceData:
    """``dataset`` as the model-ready arrays of ``config``."""
    return build_sequence_data(dataset, config.model.max_len, config.loss.time_span)


def prepare_data(config: Config, data_dir: Path | None = None) -> SequenceData:
    """The config's dataset as model-ready arrays."""
    return sequence_data(config, load_run_dataset(config, data_dir))


def enable_compilation_cache() -> None:
    """Keeps compiled steps on disk: a second run of the same shapes starts at once."""
    if jax.config.jax_compilation_cache_dir is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mqsa-jax" / "jax"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def make_evaluators(model: MQSA, data: SequenceData, config: Config,
                    partitioner: Partitioner | None = None,
                    splits: Sequence[str] = ("valid", "test"),
                    users: np.ndarray | None = None, shard: HostShard | None = None
                    ) -> list[RankingEvaluator]:
    """Full-ranking evaluators of ``splits`` (of ``users`` alone, if given); with a
    partitioner, batches are split over its batch axis, the steps run under its mesh and
    ranking is per item slice; with a ``shard`` (:class:`mqsa_jax.hosts.HostShard`), ``data`` holds
    that shard's users and ``users`` are indices among them."""
    placement = {} if partitioner is None else {
        "place": partitioner.place_batch if shard is None else shard.placer(partitioner),
        "partition": partitioner.partition}
    return [RankingEvaluator(split, data, model.encode_last, config.eval.eval_batch_size,
                             config.eval.eval_ks, users=users, shard=shard, **placement)
            for split in splits]


def evaluation_sample(config: Config, num_users: int) -> np.ndarray | None:
    """The fixed users that periodic evaluations rank (``eval_users`` of them, drawn once from
    the seed, in user order), or None when they rank every user."""
    count = config.eval.eval_users
    if not count or count >= num_users:
        return None
    return np.sort(np.random.default_rng(config.seed).choice(num_users, count, replace=False))


def checked_progress(saved: dict, num_items: int, run_dir: Path) -> RunProgress:
    """A restored checkpoint's progress; it serves only the catalogue it was trained on
    (checkpoints restore at any row count, to move between meshes)."""
    progress = RunProgress.from_json(saved, num_items)
    if progress.num_items != num_items:
        raise UserError(f"{run_dir}: its checkpoints were trained on {progress.num_items} "
                        f"items, but the dataset now has {num_items}")
    return progress


def restore_trained(run_dir: Path, which: str, config: Config,
                    num_items: int) -> tuple[MQSA, TrainState, RunProgress]:
    """The model (on one device: its item table has exactly ``num_items`` rows), and the train
    state and progress saved in a run's ``which`` (best or latest) checkpoint."""
    model = MQSA(config.model, num_items)
    # Shapes only: initialising the parameters for real, only to overwrite them, took most of
    # a one-history sports recommendation (12.05 s with it, 5.69 s without: the two
    # recommend_throughput*.md of experiments/results).
    template = jax.eval_shape(lambda: init_state(model, make_optimizer(config), config))
    with RunCheckpoints(run_dir, read_only=True) as checkpoints:
        state, saved = checkpoints.restore(which, template)
    return model, state, checked_progress(saved, num_items, run_dir)


def evaluate_run(run_dir: Path, which: str = "best", splits: Sequence[str] = ("valid", "test"),
                 data_dir: Path | None = None, ranks_path: Path | None = None) -> dict:
    """Re-evaluates a checkpoint of a run on the run's dataset.

    With ``ranks_path``, also writes there one JSON line per user: ``{"user": id, "valid": r,
    "test": r}`` with ``r`` the 1-based rank of the held-out item among the unmasked items
    (``null`` when the item is in the user's own history, where it can never be found; a split
    the user has no target in is left out).  HR@K
    is the share of ranks at most K, NDCG@K the mean of 1 / log2(r + 1) over them, MRR the mean
    of 1 / r.
    """
    config = read_run_config(run_dir)
    dataset = load_run_dataset(config, data_dir)
    data = sequence_data(config, dataset)
    model, state, progress = restore_trained(run_dir, which, config, data.num_items)
    result = {"checkpoint": which, "epoch": progress.epoch}
    evaluators = make_evaluators(model, data, config, splits=splits)
    for evaluator in evaluators:
        result[evaluator.split] = evaluator.evaluate(state.params)
    if ranks_path is not None:
        # Per split, user index -> 1-based rank (None: unfindable); users without a target
        # in the split are not keys, so their lines leave it out.
        ranks = {e.split: {u: r + 1 if r < data.num_items else None
                           for u, r in zip(e.users.tolist(), e.ranks(state.params).tolist())}
                 for e in evaluators}
        lines = (json.dumps({"user": user, **{s: r[u] for s, r in ranks.items() if u in r}})
                 + "\n" for u, user in enumerate(dataset.user_ids.tolist()))
        with atomic_output(ranks_path) as f:
            for line in lines:
                f.write(line.encode())
        result["ranks"] = str(ranks_path)
    return result
