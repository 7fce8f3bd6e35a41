"""Recommendations from a trained run, in the dataset's own item ids, and embedding export.

    rec = Recommender.load("runs/beauty-...")        # once: restores the best checkpoint
    history, unknown = rec.item_indices(["12", "7", "301"])   # source ids -> indices
    items, scores = rec.topk([history], k=10)         # batched and jitted; source ids back

Ids in and out are those of the dataset's source (for imported logs, the ids of the user's
file).  Like the evaluation, a history's items are excluded from its recommendations unless
``exclude_history=False``, and only its last ``max_len`` items are read.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from mqsa_jax.config import Config, read_run_config
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import build_sequence_data, right_aligned_tails
from mqsa_jax.data.dataset import Dataset
from mqsa_jax.errors import UserError
from mqsa_jax.evaluation import mask_items
from mqsa_jax.io import atomic_output, write_json_atomic
from mqsa_jax.model import item_scores, item_table
from mqsa_jax.runs import restore_trained

_ROW_QUANTUM = 8  # batches are padded to a power of two (at least this) to bound recompiles


class Recommender:
    def __init__(self, config: Config, model, params, dataset: Dataset):
        self.config, self.params, self.dataset = config, params, dataset
        self.num_items = dataset.num_items
        self._item_index = {item: i for i, item in enumerate(dataset.item_ids.tolist())}
        self._user_index = {user: u for u, user in enumerate(dataset.user_ids.tolist())}
        self._integer_ids = bool(np.char.isdigit(np.char.lstrip(dataset.item_ids, "-")).all())
        self._data = None
        self._ranked = jax.jit(functools.partial(_top_items, model.encode_last),
                               static_argnames="k")

    @classmethod
    def load(cls, run_dir: Path, checkpoint: str = "best", data_dir: Path | None = None):
        config = read_run_config(Path(run_dir))
        dataset = registry.load_dataset(config.dataset, registry.data_dir(data_dir))
        model, state, _ = restore_trained(Path(run_dir), checkpoint, config, dataset.num_items)
        return cls(config, model, state.params, dataset)

    def item_indices(self, ids: Sequence[str], skip_unknown: bool = False):
        """Dense indices of source item ids, and the ids that were skipped as unknown."""
        ids = [str(i).strip() for i in ids]
        if self._integer_ids:
            bad = [i for i in ids if not i.lstrip("-").isdigit()]
            if bad:
                raise UserError(f"item ids must be integers for this dataset: {', '.join(bad)}")
        unknown = [i for i in ids if i not in self._item_index]
        if unknown and not skip_unknown:
            raise UserError(f"unknown item ids: {', '.join(unknown)} "
                            "(pass --skip-unknown to ignore them)")
        known = [self._item_index[i] for i in ids if i in self._item_index]
        return known, unknown

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.num_items:
            raise UserError(f"k = {k}: expected 1 to {self.num_items} (the catalogue's size)")

    def topk_indices(self, inputs: np.ndarray, exclude: np.ndarray, k: int):
        """Top-k dense item indices and scores for right-aligned input rows [B, max_len]."""
        self._check_k(k)
        rows = len(inputs)
        padded = max(_ROW_QUANTUM, 1 << (rows - 1).bit_length())
        def pad(x):
            return np.concatenate(
                    [x, np.full((padded - rows,) + x.shape[1:], self.num_items, x.dtype)])
        scores, items = self._ranked(self.params, pad(inputs), pad(exclude), k=k)
        return np.asarray(items)[:rows], np.asarray(scores)[:rows]

    def topk(self, histories: Sequence[Sequence[int]], k: int = 10,
             exclude_history: bool = True) -> tuple[list[list[str]], list[list[float]]]:
        """Top-k source item ids and scores for each history of dense item indices."""
        if any(len(h) == 0 for h in histories):
            raise UserError("empty history: give at least one item")
        lengths = np.array([len(h) for h in histories])
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.concatenate([np.asarray(h, np.int32) for h in histories])
        inputs = right_aligned_tails(values, offsets, self.config.model.max_len, self.num_items)
        width = int(lengths.max()) if exclude_history else 1
        exclude = right_aligned_tails(values, offsets, width, self.num_items)
        if not exclude_history:
            exclude[:] = self.num_items
        return self._to_ids(*self.topk_indices(inputs, exclude, k))

    def topk_for_users(self, users: Sequence[str], k: int = 10, exclude_history: bool = True):
        """Top-k for dataset users: the test-time input and history masking of the evaluation."""
        unknown = [u for u in users if u not in self._user_index]
        if unknown:
            raise UserError(f"unknown user ids: {', '.join(map(str, unknown))}")
        if self._data is None:
            self._data = build_sequence_data(self.dataset, self.config.model.max_len)
        index = [self._user_index[u] for u in users]
        exclude = self._data.test_history[index]
        if not exclude_history:
            exclude = np.full_like(exclude, self.num_items)
        return self._to_ids(*self.topk_indices(self._data.test_inputs[index], exclude, k))

    def _to_ids(self, items: np.ndarray, scores: np.ndarray):
        """Source ids and scores, without the excluded items (-inf) that fill a short top."""
        finite = np.isfinite(scores)
        ids = [self.dataset.item_ids[row[keep]].tolist() for row, keep in zip(items, finite)]
        return ids, [row[keep].tolist() for row, keep in zip(scores, finite)]


def _top_items(encode_last, params, inputs, exclude, k):
    scores = item_scores(params, encode_last(params, inputs))
    return jax.lax.top_k(mask_items(scores, exclude), k)


def export_embeddings(run_dir: Path, out_dir: Path, checkpoint: str = "best",
                      data_dir: Path | None = None) -> dict:
    """Writes ``item_embeddings.npz`` (table and source ids) and ``model_config.json``."""
    recommender = Recommender.load(run_dir, checkpoint, data_dir)
    params = recommender.params
    with atomic_output(out_dir / "item_embeddings.npz") as f:
        np.savez(f, item_embeddings=np.asarray(item_table(params)),
                 position_embeddings=np.asarray(params["params"]["position_embedding"]),
                 item_ids=recommender.dataset.item_ids)
    description = {
        "config": recommender.config.to_json(),
        "num_items": recommender.num_items,
        "checkpoint": checkpoint,
        "scoring": "score(item) = state . item_embeddings[item]; padding id = num_items",
    }
    write_json_atomic(out_dir / "model_config.json", description)
    return description
