"""Recommendations from a trained run, in the dataset's own item ids.

    rec = Recommender.load("runs/beauty-...")        # once: restores the best checkpoint
    history, unknown = rec.item_indices(["12", "7", "301"])   # source ids -> indices
    items, scores = rec.topk([history], k=10)         # batched and jitted; source ids back
    items, scores = rec.topk_for_users(["u1"], full_history=True)   # "what next" for a user

Ids in and out are those of the dataset's source (for imported logs, the ids of the user's
file).  Like the evaluation, a history's items are excluded from its recommendations unless
``exclude_history=False``, and only its last ``max_len`` items are read.  Shapes are static:
rows are padded to a power of two (or to the batch size of a file), and the excluded items to a
width that holds the dataset's longest sequence, so a stream of batches compiles once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
from flax.typing import VariableDict
from tqdm import tqdm

from mqsa_jax.config import Config, read_run_config
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import build_sequence_data, pad_to_shape, right_aligned_tails
from mqsa_jax.data.dataset import Dataset, full_sequences
from mqsa_jax.errors import UserError
from mqsa_jax.evaluation import mask_items
from mqsa_jax.io import atomic_output
from mqsa_jax.model import item_scores
from mqsa_jax.runs import restore_trained

_ROW_QUANTUM = 8  # a few rows are padded to a power of two (at least this) to bound recompiles


def _bucket(n: int) -> int:
    return max(_ROW_QUANTUM, 1 << (max(n, 1) - 1).bit_length())


class Recommender:
    def __init__(self, config: Config, model, params, dataset: Dataset):
        self.config, self.model, self.params, self.dataset = config, model, params, dataset
        self.num_items = dataset.num_items
        self._item_index = {item: i for i, item in enumerate(dataset.item_ids.tolist())}
        self._user_index = {user: u for u, user in enumerate(dataset.user_ids.tolist())}
        self._integer_ids = bool(np.char.isdigit(np.char.lstrip(dataset.item_ids, "-")).all())
        # Excluded items: one width for every history as long as the dataset's longest sequence.
        self.exclude_width = _bucket(int(dataset.train_lengths.max(initial=0)) + 2)
        self._data = self._full = None
        self._ranked = jax.jit(functools.partial(top_items, model.encode_last),
                               static_argnames="k")

    @classmethod
    def load(cls, run_dir: Path, checkpoint: str = "best", data_dir: Path | None = None
             ) -> Recommender:
        """The recommender of a trained run: its ``checkpoint`` (best or latest) and dataset."""
        config = read_run_config(Path(run_dir))
        dataset = registry.load_dataset(config.dataset, registry.data_dir(data_dir))
        model, state, _ = restore_trained(Path(run_dir), checkpoint, config, dataset.num_items)
        return cls(config, model, state.params, dataset)

    def item_indices(self, ids: Sequence[str], skip_unknown: bool = False
                     ) -> tuple[list[int], list[str]]:
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

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.num_items:
            raise UserError(f"k = {k}: expected 1 to {self.num_items} (the catalogue's size)")

    def topk_indices(self, inputs: np.ndarray, exclude: np.ndarray, k: int,
                     rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k dense item indices and scores.

        Args:
          inputs: [B, max_len] right-aligned histories (padding id N).
          exclude: [B, W] items to leave out (padding id N).
          k: how many items.
          rows: pad the batch to this many rows (default: a power of two).

        Returns:
          ([B, k] item indices, [B, k] scores); -inf scores where fewer than k items are left.
        """
        self.check_k(k)
        count = len(inputs)
        rows = rows or _bucket(count)
        width = max(self.exclude_width, _bucket(exclude.shape[1]))
        scores, items = self._ranked(
            self.params, pad_to_shape(inputs, rows, inputs.shape[1], self.num_items),
            pad_to_shape(exclude, rows, width, self.num_items), k=k)
        return np.asarray(items)[:count], np.asarray(scores)[:count]

    def topk(self, histories: Sequence[Sequence[int]], k: int = 10,
             exclude_history: bool = True, rows: int | None = None
             ) -> tuple[list[list[str]], list[list[float]]]:
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
        return self._to_ids(*self.topk_indices(inputs, exclude, k, rows))

    def user_index(self, users: Sequence[str]) -> list[int]:
        unknown = [u for u in users if u not in self._user_index]
        if unknown:
            raise UserError(f"unknown user ids: {', '.join(map(str, unknown))}")
        return [self._user_index[u] for u in users]

    def full_histories(self, index: Sequence[int]) -> list[np.ndarray]:
        """Each user's whole history, its held-out valid and test items included."""
        if self._full is None:
            self._full = full_sequences(self.dataset)
        items, offsets = self._full
        return [items[offsets[u]:offsets[u + 1]] for u in index]

    def topk_for_users(self, users: Sequence[str], k: int = 10, exclude_history: bool = True,
                       full_history: bool = False, rows: int | None = None
                       ) -> tuple[list[list[str]], list[list[float]]]:
        """Top-k for dataset users.  By default from the test-time input, with the evaluation's
        history masking (what the test metrics score); with ``full_history``, from the user's
        whole history, its last item included: what the user would get next."""
        index = self.user_index(users)
        if full_history:
            return self.topk(self.full_histories(index), k, exclude_history, rows)
        if self._data is None:
            self._data = build_sequence_data(self.dataset, self.config.model.max_len)
        inputs, _, exclude = self._data.eval_rows("test", index)
        if not exclude_history:
            exclude = np.full_like(exclude, self.num_items)
        return self._to_ids(*self.topk_indices(inputs, exclude, k, rows))

    def _to_ids(self, items: np.ndarray, scores: np.ndarray
                ) -> tuple[list[list[str]], list[list[float]]]:
        """Source ids and scores, without the excluded items (-inf) that fill a short top."""
        finite = np.isfinite(scores)
        ids = [self.dataset.item_ids[row[keep]].tolist() for row, keep in zip(items, finite)]
        return ids, [row[keep].tolist() for row, keep in zip(scores, finite)]


def top_items(encode_last: Callable[[VariableDict, jax.Array], jax.Array], params: VariableDict,
              inputs: jax.Array, exclude: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` best items for each history of ``inputs`` [B, T], none of ``exclude`` [B, W]
    (padded with any id >= N): their scores and indices, each [B, k]."""
    scores = item_scores(params, encode_last(params, inputs))
    return jax.lax.top_k(mask_items(scores, exclude), k)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parse_line(source: Path, number: int, text: str) -> tuple[object, list[str]]:
    """``{"id": ..., "history": [...]}`` -> (id, item ids as strings); a user error otherwise."""
    expected = f'{source}:{number}: expected {{"id": ..., "history": [item ids]}} with items'
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}:{number}: not JSON ({e.msg})") from None
    if not isinstance(record, dict) or "id" not in record:
        raise UserError(expected)
    history = record.get("history")
    if not isinstance(history, list) or not history or not all(
            isinstance(i, (str, int)) for i in history):
        raise UserError(expected)
    return record["id"], [str(i) for i in history]


def recommend_file(recommender: Recommender, source: Path, target: Path, k: int = 10,
                   exclude_history: bool = True, skip_unknown: bool = False,
                   batch_size: int | None = None, progress: tqdm | None = None) -> dict:
    """Streams ``source`` (JSON lines ``{"id", "history"}``, source item ids, oldest first) to
    ``target`` (``{"id", "items", "scores"}`` per line), ``batch_size`` histories per device
    call (default: the run's ``eval_batch_size``, the evaluation's users per ranking step: the
    same [B, N] scores make 256 faster than 1024 here too, recommend_throughput.md).  A malformed
    line or an unknown item is an error naming the line, unless
    ``skip_unknown``: then unknown items are dropped, and lines left empty or malformed are
    skipped, all counted in the returned summary.  ``target`` is written atomically."""
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    counts = {"lines": 0, "written": 0, "skipped_lines": 0, "skipped_items": 0}
    batch_size = batch_size or recommender.config.eval.eval_batch_size
    try:
        with open(source, encoding="utf-8") as lines, atomic_output(target) as out:
            numbered = ((n, t) for n, t in enumerate(lines, 1) if t.strip())
            for chunk in _chunks(numbered, batch_size):
                read = [_read_line(recommender, source, n, t, skip_unknown) for n, t in chunk]
                kept = [line for line in read if line is not None and line[1]]
                counts["lines"] += len(chunk)
                counts["skipped_lines"] += len(chunk) - len(kept)
                counts["skipped_items"] += sum(len(line[2]) for line in read if line is not None)
                if kept:
                    items, scores = recommender.topk([line[1] for line in kept], k,
                                                     exclude_history, batch_size)
                    out.write("".join(json.dumps({"id": line[0], "items": it, "scores": sc})
                                      + "\n" for line, it, sc in zip(kept, items, scores))
                              .encode())
                    counts["written"] += len(kept)
                if progress is not None:
                    progress.update(len(chunk))
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start} of a "
                        "read block)") from None
    return counts


def _read_line(recommender: Recommender, source: Path, number: int, text: str,
               skip_unknown: bool) -> tuple[object, list[int], list[str]] | None:
    """One input line's id, known item indices and unknown item ids; None for a malformed
    line that ``skip_unknown`` skips (without it, an error naming the line)."""
    try:
        user, history = _parse_line(source, number, text)
        known, unknown = recommender.item_indices(history, skip_unknown)
    except UserError as e:
        if not skip_unknown:
            raise UserError(str(e) if str(e).startswith(f"{source}:")
                            else f"{source}:{number}: {e}") from None
        return None
    return user, known, unknown


def recommend_all_users(recommender: Recommender, target: Path, k: int = 10,
                        exclude_history: bool = True, batch_size: int | None = None,
                        progress: tqdm | None = None) -> dict:
    """Every dataset user's top-k from its whole history, as ``{"id", "items", "scores"}``
    lines (the user's id in ``id``), written atomically to ``target``, ``batch_size`` users per
    device call (default: as ``recommend_file``)."""
    users = recommender.dataset.user_ids.tolist()
    batch_size = batch_size or recommender.config.eval.eval_batch_size
    with atomic_output(target) as out:
        for chunk in _chunks(users, batch_size):
            items, scores = recommender.topk_for_users(chunk, k, exclude_history,
                                                       full_history=True, rows=batch_size)
            out.write("".join(json.dumps({"id": u, "items": it, "scores": sc}) + "\n"
                              for u, it, sc in zip(chunk, items, scores)).encode())
            if progress is not None:
                progress.update(len(chunk))
    return {"users": len(users)}
