"""Full-ranking evaluation: every user's label ranked against all N items, history masked.

An evaluator is a small object bound to one split (big_vision style): ``evaluate(params)``
returns ``{"HR@5": ..., "NDCG@20": ..., "MRR": ...}``.  Scores never leave the device, and are
made block by block (:func:`label_ranks`); only the metric sums come back, once per call (or,
with ``ranks(params)``, each user's rank).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import VariableDict

from mqsa_jax.config import EvalConfig, metric_names
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.item_blocks import Block, scan_blocks
from mqsa_jax.model import item_table
from mqsa_jax.rounding import ceil_div
from mqsa_jax.tables import table_slices

KS = EvalConfig.eval_ks  # the reference's cut-offs
# The reference selects the epoch (and the reproduction orders the variants) by valid NDCG@20.
SELECTION_METRIC = EvalConfig.selection_metric


def mask_items(scores: jax.Array, items: jax.Array) -> jax.Array:
    """Scores with each row's ``items`` set to -inf; ids >= N (padding) are ignored."""
    rows = jnp.arange(scores.shape[0])[:, None]
    return scores.at[rows, items].set(-jnp.inf, mode="drop")


def _beats(scores: jax.Array, ids: jax.Array, label_scores: jax.Array,
           labels: jax.Array) -> jax.Array:
    """Whether items ``ids`` with ``scores`` rank above the label: a higher score, or the same
    score and a lower id (``lax.top_k``'s order).  Shapes broadcast against ``[B, 1]``."""
    return (scores > label_scores) | ((scores == label_scores) & (ids < labels))


# Below this many items, item ids and per-row counts are exact in float32 (2^24).
FLOAT_EXACT = 1 << 24


def _positive(x: jax.Array) -> jax.Array:
    """1.0 where ``x > 0``, else 0.0, from max, ceil and min alone."""
    return jnp.minimum(jnp.ceil(jnp.maximum(x, 0.0)), 1.0)


def _count_beating(scores: jax.Array, ids: jax.Array, label_scores: jax.Array,
                   labels: jax.Array, num_items: int, arithmetic_below: int) -> jax.Array:
    """Per row and slice, how many items ``ids`` [S, W] (all below ``num_items``) with
    ``scores`` [B, S, W] beat the label (as :func:`_beats` decides), for ``label_scores`` and
    ``labels`` [B, 1, 1]: [B, S].

    This is the ranking's N-wide pass.  XLA:CPU runs a comparison's select or convert inside a
    row sum more slowly than this form of max, ceil and min, which it vectorises: a whole sports
    evaluation took a fifth less (experiments/results/eval_speed.md).  It is exact below
    :data:`FLOAT_EXACT` items, where ids and counts are whole floats; it serves catalogues of
    fewer than ``arithmetic_below`` items, comparisons the others.  A difference of two scores
    that flushes to zero (scores below 1e-31 in magnitude) counts as a tie, as a comparison of
    two flushed scores does.
    """
    if num_items >= min(arithmetic_below, FLOAT_EXACT):
        return jnp.sum(_beats(scores, ids, label_scores, labels), axis=-1)
    gap = scores - label_scores
    tie = 1.0 - _positive(jnp.abs(gap))
    lower = _positive(labels.astype(scores.dtype) - ids.astype(scores.dtype))
    return jnp.sum(_positive(gap) + tie * lower, axis=-1).astype(jnp.int32)


def _history_beats(history_scores, labels, label_scores, history, num_items):
    """Per row, how many distinct history items (the label's own entries aside) rank above the
    label, from their scores ``history_scores`` [B, H]."""
    real = (history < num_items) & (history != labels)
    position = jnp.arange(history.shape[1])
    repeated = jnp.any((history[:, :, None] == history[:, None, :])
                       & (position[None, :, None] > position[None, None, :]), axis=2)
    beats = _beats(history_scores, history, label_scores, labels)
    return jnp.sum(real & ~repeated & beats, axis=1)


# Items per block of the ranking's scans (over all slices): [B, block] scores stay in cache.
EVAL_BLOCK = 4096
# Up to this many items per table slice, the ranking scores them in one product: one pass
# costs about what the two scans do on 16k items and 1.5-2x less on 12k (256 users per step,
# measured on 2 cores), and [B, 32768] floats are a bounded buffer, not one growing with N.
ONE_PASS_ITEMS = 32768


def label_ranks(states: jax.Array, table: jax.Array, labels: jax.Array, history: jax.Array,
                num_items: int, block: int = EVAL_BLOCK, one_pass: int = ONE_PASS_ITEMS,
                arithmetic_below: int = FLOAT_EXACT) -> jax.Array:
    """0-based rank of each label among the unmasked items, scoring ``states . table^T`` block
    by block: no ``[B, N]`` array is written to memory.

    Ties are broken as ``lax.top_k`` does: the lower item id ranks first.  The rank is a count
    (the items that beat the label, less the excluded ones among them), so nothing is sorted.
    Two scans read a large table: the first takes the label's and the history's scores from the
    same products the second compares against, so a tie is a tie however XLA blocks them; a
    small one is scored in one product.  On a mesh that splits the table's rows, each device
    scans its own slice, and the per-slice counts are summed once, at the end.

    Args:
      states: [B, d] the users' last states.
      table: [R, d] item rows, R >= ``num_items`` (a mesh's padding rows at the end).
      labels: [B] the held-out items.
      history: [B, H] item ids to exclude, padded with any id >= ``num_items``.
      num_items: N.
      block: items per block over all slices.
      one_pass: up to this many rows per slice, one product instead of two scans.
      arithmetic_below: the count's arithmetic form for fewer items than this (at most
        :data:`FLOAT_EXACT`), comparisons from there (0: always; a benchmark compares them).

    Returns:
      [B] int32 ranks; N where the label is in its own history (it can never be found).
    """
    slices = table_slices()
    targets = jnp.concatenate([labels[:, None], history], axis=1)  # [B, 1 + H]

    def target_scores_in(z, item_ids):  # [B, S, 1 + H]: their scores where in z, else -inf
        local = targets[:, None, :] - item_ids[None, :, :1]
        inside = (local >= 0) & (local < z.shape[2])
        taken = jnp.take_along_axis(z, jnp.clip(local, 0, z.shape[2] - 1), axis=2)
        return jnp.where(inside, taken, -jnp.inf)

    def beating(z, item_ids, label_scores):  # [B, S]
        return _count_beating(z, item_ids, label_scores[:, :, None], labels[:, None, None],
                              num_items, arithmetic_below)

    local = table.shape[0] // slices
    if local <= one_pass:
        item_ids = jnp.arange(slices * local, dtype=jnp.int32).reshape(slices, local)
        z = (states @ table.T).reshape(len(states), slices, local)
        if table.shape[0] > num_items:  # padding rows: never ranked
            z = jnp.where(item_ids < num_items, z, -jnp.inf)
        target_scores = target_scores_in(z, item_ids).max(axis=1)
        total = beating(z, item_ids, target_scores[:, :1])
    else:
        # The items' blocks (item_blocks.scan_blocks, as the loss scans them): scores -inf at
        # padding and where the block before held the item, so none is counted twice.
        def scores(items: Block):
            return items.only_counted(items.logits(states), -jnp.inf)

        found = jnp.full((len(states), slices, targets.shape[1]), -jnp.inf, states.dtype)
        found, _, _ = scan_blocks(
            lambda found, items: (jnp.maximum(found, target_scores_in(scores(items),
                                                                      items.ids)), None),
            found, table, ceil_div(block, slices), slices, num_items, "float32")
        target_scores = found.max(axis=1)
        total, _, _ = scan_blocks(
            lambda total, items: (total + beating(scores(items), items.ids,
                                                  target_scores[:, :1]), None),
            jnp.zeros((len(states), slices), jnp.int32), table, ceil_div(block, slices),
            slices, num_items, "float32")
    ranks = total.sum(axis=1) - _history_beats(target_scores[:, 1:], labels[:, None],
                                               target_scores[:, :1], history, num_items)
    masked = jnp.any(history == labels[:, None], axis=1)  # a masked label is never found
    return jnp.where(masked, num_items, ranks)


def metric_sums(ranks: jax.Array, weights: jax.Array, ks: tuple[int, ...] = KS,
                found: jax.Array | None = None) -> jax.Array:
    """Sums over users of HR@K and NDCG@K (one relevant item: NDCG = 1 / log2(rank + 2)), then
    of the reciprocal rank.

    Args:
      ranks: [B] 0-based ranks.
      weights: [B] 1 for a real user, 0 for a filler.
      ks: the cut-offs.
      found: [B] whether each label can be found at all (a label in its own history cannot:
        it is no hit at any K, its reciprocal rank 0); None: every label.

    Returns:
      [2 len(ks) + 1] sums, in the order of :func:`mqsa_jax.config.metric_names`.
    """
    sums = []
    # A label that cannot be found is never a hit, even where K reaches past the N it is
    # ranked at (a catalogue smaller than K).
    weights = weights if found is None else jnp.where(found, weights, 0.0)
    for k in ks:
        hit = (ranks < k).astype(jnp.float32) * weights
        sums += [hit.sum(), jnp.sum(hit / jnp.log2(ranks.astype(jnp.float32) + 2.0))]
    reciprocal = weights / (ranks.astype(jnp.float32) + 1.0)
    return jnp.stack([*sums, reciprocal.sum()])


# Evaluation rows run on their last W columns, W the smallest of these that holds the batch's
# longest history: outputs at real positions do not depend on the padding before them.
EVAL_WIDTHS = (8, 16, 32)


class RankingEvaluator:
    """Ranks one split (``"valid"`` or ``"test"``) for every user, in fixed-size batches.

    Users are grouped by history length (metrics are sums, so order is free) and each batch runs
    at the narrowest width in ``EVAL_WIDTHS`` (or the full width) that holds its rows.
    """

    def __init__(self, split: str, data: SequenceData, encode_last, batch_size: int, ks=KS,
                 place=jax.device_put, users: np.ndarray | None = None, shard=None,
                 arithmetic_below: int = FLOAT_EXACT, partition=lambda jitted: jitted):
        """``place`` puts a batch's arrays on the devices (split over the data axis of a mesh);
        ``partition`` makes the jitted steps run under a mesh (:meth:`Partitioner.partition`):
        where it splits the item table, ranking is per item slice.  ``users``: rank these
        users only (None: every user; either way, only those with a target in the split:
        :attr:`users`).  ``shard`` (:class:`mqsa_jax.hosts.HostShard`): ``data`` holds this
        process's users alone, and each step ranks ``batch_size / shard.count`` of them beside
        the other shards' (their number of steps and widths agreed here); ``place`` then takes
        this shard's rows.
        ``arithmetic_below``: as :func:`label_ranks` takes it."""
        chosen = np.arange(data.num_users) if users is None else np.asarray(users)
        # A temporal split's users without this split's target are not ranked on it.
        chosen = chosen[(data.valid_labels if split == "valid" else data.test_labels)[chosen] >= 0]
        self.users = chosen
        split_over = shard.count if shard is not None and shard.split else 1
        rows = batch_size // split_over
        self.split, self.ks, self.num_items = split, tuple(ks), data.num_items
        self.num_users = len(chosen) if split_over == 1 else int(shard.gather(len(chosen)).sum())
        self._data, self._place, self._split_over = data, place, split_over
        # The split's input lengths: the test input adds the validation item.
        lengths = np.minimum(data.cut_lengths[chosen] + (split == "test"), data.max_len)
        order = np.argsort(lengths, kind="stable")
        steps = ceil_div(len(order), rows)
        if split_over > 1:
            steps = int(shard.gather(steps).max())
        order = np.pad(order, (0, steps * rows - len(order)), constant_values=-1).reshape(-1, rows)
        longest = np.where(order >= 0, lengths[np.maximum(order, 0)] if len(lengths) else 0,
                           0).max(axis=1, initial=1)
        if split_over > 1:
            longest = shard.gather(longest).max(axis=0)
        widths = [w for w in EVAL_WIDTHS if w < data.max_len] + [data.max_len]
        filler = chosen[0] if len(chosen) else 0  # weight 0: ranked, never counted
        # Per batch: its rows' users (positions in ``chosen``; -1: a filler), the data's rows
        # they read, and the width they run at.  Their arrays are made and placed per step.
        self._users = list(order)
        self._rows = [np.where(p >= 0, chosen[np.maximum(p, 0)], filler) for p in order]
        self._widths = [next(w for w in widths if w >= most) for most in longest]
        self._ranks, self._step = _ranking_steps(encode_last, data.num_items, arithmetic_below,
                                                 self.ks, partition)

    def _batch(self, index: int) -> tuple[jax.Array, ...]:
        """Batch ``index``'s inputs, labels, history and weights, on the devices."""
        inputs, labels, history = self._data.eval_rows(self.split, self._rows[index])
        # Both splits' histories are T + 1 wide (the validation's gains a padding column, which
        # masks nothing), so that their batches share compiled steps.
        history = np.pad(history, ((0, 0), (0, self._data.max_len + 1 - history.shape[1])),
                         constant_values=self._data.padding_id)
        weights = (self._users[index] >= 0).astype(np.float32)
        return tuple(map(self._place, (inputs[:, -self._widths[index]:], labels, history,
                                       weights)))

    def lowered(self, params: VariableDict, index: int = -1) -> jax.stages.Lowered:
        """The batch step lowered for batch ``index``: its compiled HLO shows what moves
        between devices."""
        return self._step.lower(params, *self._batch(index))

    def evaluate(self, params: VariableDict) -> dict[str, float]:
        """The split's metrics: means over users of HR@K, NDCG@K and MRR."""
        total = sum(self._step(params, *self._batch(i)) for i in range(len(self._rows)))
        values = np.asarray(total, dtype=np.float64) / self.num_users
        return dict(zip(metric_names(self.ks), values.tolist()))

    def ranks(self, params: VariableDict) -> np.ndarray:
        """[len(users)] each of :attr:`users`' 0-based rank of its held-out item among the
        unmasked items, or N (the catalogue's size) when the item is in the user's own history
        and cannot be found.
        Every ranked user must be this process's (no split ``shard``): a step's ranks are the
        whole batch's, across processes.
        """
        if self._split_over > 1:
            raise ValueError("ranks() of a split shard: each process holds only its own users")
        ranks = np.empty(self.num_users, np.int64)
        for index, users in enumerate(self._users):
            batch_ranks = np.asarray(self._ranks(params, *self._batch(index)[:3]))
            ranks[users[users >= 0]] = batch_ranks[users >= 0]
        return ranks


@functools.lru_cache(maxsize=16)
def _ranking_steps(encode_last, num_items: int, arithmetic_below: int, ks: tuple[int, ...],
                   partition):
    """The jitted rank and metric-sum steps, shared by the evaluators of one model (flax
    modules compare by value): the splits compile each width once between them.  Ranks are
    exact (capped at N, which no findable label reaches), for MRR and ``--ranks``."""
    ranks = jax.jit(functools.partial(_batch_ranks, encode_last, num_items, arithmetic_below))
    return partition(ranks), partition(jax.jit(functools.partial(_batch_sums, ranks, num_items,
                                                                 ks)))


def _batch_ranks(encode_last, num_items, arithmetic_below, params, inputs, labels, history):
    return label_ranks(encode_last(params, inputs), item_table(params), labels, history,
                       num_items, arithmetic_below=arithmetic_below)


def _batch_sums(batch_ranks, num_items, ks, params, inputs, labels, history, weights):
    ranks = batch_ranks(params, inputs, labels, history)
    return metric_sums(ranks, weights, ks, found=ranks < num_items)
