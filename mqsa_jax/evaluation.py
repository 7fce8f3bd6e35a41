"""Full-ranking evaluation: every user's label ranked against all N items, history masked.

An evaluator is a small object bound to one split (big_vision style): ``evaluate(params)``
returns ``{"HR@5": ..., "NDCG@20": ..., "MRR": ...}``.  Scores never leave the device; only the
metric sums come back, once per call (or, with ``ranks(params)``, each user's rank).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.config import EvalConfig, metric_names
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.model import item_scores
from mqsa_jax.tables import BATCH, ITEM, mesh_axis, real_rows

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
_FLOAT_EXACT = 1 << 24


def _positive(x: jax.Array) -> jax.Array:
    """1.0 where ``x > 0``, else 0.0, from max, ceil and min alone."""
    return jnp.minimum(jnp.ceil(jnp.maximum(x, 0.0)), 1.0)


def _count_beating(scores: jax.Array, ids: jax.Array, label_scores: jax.Array,
                   labels: jax.Array, num_items: int) -> jax.Array:
    """Per row, how many items ``ids`` [W] (all below ``num_items``) with ``scores`` [B, W]
    beat the label (as :func:`_beats` decides), for ``label_scores`` and ``labels`` [B, 1].

    This is the ranking's one N-wide pass.  XLA:CPU runs a comparison's select or convert
    inside a row sum more slowly than this form of max, ceil and min, which it vectorises:
    a whole sports evaluation takes a fifth less (experiments/results/eval_speed.md, 256 users
    per step; even on beauty).  It is exact below ``_FLOAT_EXACT`` items, where ids
    and counts are whole floats.  A difference of two scores that flushes to zero (scores
    below 1e-31 in magnitude) counts as a tie, as a comparison of two flushed scores does.
    """
    if num_items >= _FLOAT_EXACT:
        return jnp.sum(_beats(scores, ids, label_scores, labels), axis=1)
    gap = scores - label_scores
    tie = 1.0 - _positive(jnp.abs(gap))
    lower = _positive(labels.astype(scores.dtype) - ids.astype(scores.dtype))
    return jnp.sum(_positive(gap) + tie * lower, axis=1).astype(jnp.int32)


def _history_beats(scores_at, labels, label_scores, history, num_items):
    """Per row, how many distinct history items (the label's own entries aside) rank above the
    label; ``scores_at(ids)`` gives the scores at history ids, 0 where it cannot."""
    real = (history < num_items) & (history != labels)
    position = jnp.arange(history.shape[1])
    repeated = jnp.any((history[:, :, None] == history[:, None, :])
                       & (position[None, :, None] > position[None, None, :]), axis=2)
    beats = _beats(scores_at(history), history, label_scores, labels)
    return jnp.sum(real & ~repeated & beats, axis=1)


def label_ranks(scores: jax.Array, labels: jax.Array, history: jax.Array, top: int) -> jax.Array:
    """0-based rank of each label among the unmasked items, or ``top`` if it is not in the top.

    ``history`` [B, H] holds item ids to exclude, padded with any id >= N.  Ties are broken as
    ``lax.top_k`` does: the lower item id ranks first.  The rank is a count (the items that
    beat the label, less the excluded ones among them), so no row is sorted.
    """
    num_items = scores.shape[1]
    labels = labels[:, None]
    label_scores = jnp.take_along_axis(scores, labels, axis=1)
    count = _count_beating(scores, jnp.arange(num_items), label_scores, labels, num_items)
    count -= _history_beats(
        lambda ids: jnp.take_along_axis(scores, jnp.minimum(ids, num_items - 1), axis=1),
        labels, label_scores, history, num_items)
    masked = jnp.any(history == labels, axis=1)  # a masked label is never found
    return jnp.where(masked, top, jnp.minimum(count, top))


def sliced_label_ranks(scores, labels, history, top: int) -> jax.Array:
    """:func:`label_ranks` for scores whose columns are split like the item table's rows on the
    current mesh (``jax.set_mesh``).

    Each device counts, in its own slice, the items that beat the label and the excluded ones
    among them; the counts and the label's score are summed over the slices, so no device ever
    holds a whole N-wide row.
    """
    from jax.sharding import PartitionSpec as P

    (axis, slices), batch_axis = mesh_axis(ITEM), mesh_axis(BATCH)[0]

    def local(scores, labels, history):
        width = scores.shape[1]
        offset = jax.lax.axis_index(axis) * width
        labels = labels[:, None]
        own = (labels >= offset) & (labels < offset + width)
        label_scores = jax.lax.psum(jnp.where(own, jnp.take_along_axis(
            scores, jnp.clip(labels - offset, 0, width - 1), axis=1), 0.0), axis)
        count = _count_beating(scores, offset + jnp.arange(width), label_scores, labels,
                               width * slices)

        def scores_at(ids):
            inside = (ids >= offset) & (ids < offset + width)
            local_scores = jnp.take_along_axis(scores, jnp.clip(ids - offset, 0, width - 1), 1)
            # Items of other slices cannot beat the label here: they are counted where they live.
            return jnp.where(inside, local_scores, -jnp.inf)

        count -= _history_beats(scores_at, labels, label_scores, history, width * slices)
        count = jax.lax.psum(count, axis)
        masked = jnp.any(history == labels, axis=1)
        return jnp.where(masked, top, jnp.minimum(count, top))

    # The ranks are the same on every device of a slice group (they come from summed values),
    # which shard_map cannot infer: check_vma=False.
    rows = P(batch_axis)
    return jax.shard_map(local, in_specs=(P(batch_axis, axis), rows, rows), out_specs=rows,
                         check_vma=False)(scores, labels, history)


def metric_sums(ranks: jax.Array, weights: jax.Array, ks=KS,
                found: jax.Array | None = None) -> jax.Array:
    """Sums over users of HR@K and NDCG@K (one relevant item: NDCG = 1 / log2(rank + 2)), then
    of the reciprocal rank.

    Args:
      ranks: [B] 0-based ranks.
      weights: [B] 1 for a real user, 0 for a filler.
      ks: the cut-offs.
      found: [B] whether each label can be found at all (a label in its own history cannot:
        its reciprocal rank is 0); None: every label.

    Returns:
      [2 len(ks) + 1] sums, in the order of :func:`mqsa_jax.config.metric_names`.
    """
    sums = []
    for k in ks:
        hit = (ranks < k).astype(jnp.float32) * weights
        sums += [hit.sum(), jnp.sum(hit / jnp.log2(ranks.astype(jnp.float32) + 2.0))]
    reciprocal = weights / (ranks.astype(jnp.float32) + 1.0)
    if found is not None:
        reciprocal = jnp.where(found, reciprocal, 0.0)
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
                 place=jax.device_put, users: np.ndarray | None = None):
        """``place`` puts a batch's arrays on the devices (split over the data axis of a mesh).
        Called under a mesh that splits the item table (``Partitioner.activate``), ranking is
        per item slice.  ``users``: rank these users only (None: every user)."""
        chosen = slice(None) if users is None else users
        inputs = getattr(data, f"{split}_inputs")[chosen]
        labels = getattr(data, f"{split}_labels")[chosen]
        history = getattr(data, f"{split}_history")[chosen]
        self.split, self.ks, self.num_users = split, tuple(ks), len(labels)
        self.num_items = data.num_items
        order = np.argsort((inputs != data.padding_id).sum(axis=1), kind="stable")
        order = np.pad(order, (0, -len(order) % batch_size), constant_values=-1)
        widths = [w for w in EVAL_WIDTHS if w < data.max_len] + [data.max_len]
        self._batches, self._users = [], []  # per batch: its arrays, its rows' users (-1: none)
        for users in order.reshape(-1, batch_size):
            self._users.append(users)
            real_users = users[users >= 0]
            weights = np.zeros(batch_size, np.float32)
            weights[: len(real_users)] = 1.0
            users = np.where(users >= 0, users, real_users[0])  # weight-0 fillers
            longest = int((inputs[users] != data.padding_id).sum(axis=1).max())
            width = next(w for w in widths if w >= longest)
            self._batches.append(tuple(map(place, (inputs[users, -width:], labels[users],
                                                   history[users], weights))))
        # Ranks are exact (capped at N, which no findable label reaches), for MRR and --ranks.
        self._ranks = jax.jit(functools.partial(_batch_ranks, encode_last, data.num_items))
        self._step = jax.jit(functools.partial(_batch_sums, self._ranks, data.num_items,
                                               self.ks))

    def lowered(self, params, index: int = -1):
        """The batch step lowered for batch ``index``: its compiled HLO shows what moves
        between devices."""
        return self._step.lower(params, *self._batches[index])

    def evaluate(self, params) -> dict[str, float]:
        """The split's metrics: means over users of HR@K, NDCG@K and MRR."""
        total = sum(self._step(params, *batch) for batch in self._batches)
        values = np.asarray(total, dtype=np.float64) / self.num_users
        return dict(zip(metric_names(self.ks), values.tolist()))

    def ranks(self, params) -> np.ndarray:
        """[U] each user's 0-based rank of its held-out item among the unmasked items, or N
        (the catalogue's size) when the item is in the user's own history and cannot be found.
        """
        ranks = np.empty(self.num_users, np.int64)
        for users, batch in zip(self._users, self._batches):
            batch_ranks = np.asarray(self._ranks(params, *batch[:3]))
            ranks[users[users >= 0]] = batch_ranks[users >= 0]
        return ranks


def _batch_ranks(encode_last, num_items, params, inputs, labels, history):
    scores = item_scores(params, encode_last(params, inputs))  # [B, R]
    if scores.shape[1] > num_items:  # a mesh's padding rows: ranked below every item
        scores = jnp.where(real_rows(scores.shape[1], num_items), scores, -jnp.inf)
    ranks = sliced_label_ranks if mesh_axis(ITEM)[1] > 1 else label_ranks
    return ranks(scores, labels, history, num_items)


def _batch_sums(batch_ranks, num_items, ks, params, inputs, labels, history, weights):
    ranks = batch_ranks(params, inputs, labels, history)
    return metric_sums(ranks, weights, ks, found=ranks < num_items)
