"""Full-ranking evaluation: every user's label ranked against all N items, history masked.

An evaluator is a small object bound to one split (big_vision style): ``evaluate(params)``
returns ``{"HR@5": ..., "NDCG@20": ...}``.  Scores never leave the device; only the metric sums
come back, once per call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.data.arrays import SequenceData

KS = (5, 10, 20)


def metric_names(ks=KS) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]


def mask_items(scores: jax.Array, items: jax.Array) -> jax.Array:
    """Scores with each row's ``items`` set to -inf; ids >= N (padding) are ignored."""
    rows = jnp.arange(scores.shape[0])[:, None]
    return scores.at[rows, items].set(-jnp.inf, mode="drop")


def label_ranks(scores: jax.Array, labels: jax.Array, history: jax.Array, top: int) -> jax.Array:
    """0-based rank of each label among the unmasked items, or ``top`` if it is not in the top.

    ``history`` holds item ids to exclude, padded with any id >= N.
    Ties are broken as ``lax.top_k`` does: the lower item id ranks first.
    """
    scores = mask_items(scores, history)
    _, best = jax.lax.top_k(scores, top)
    hits = best == labels[:, None]
    # A masked label is never found, even where so much is masked that the top holds -inf.
    masked = jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0] == -jnp.inf
    return jnp.where(hits.any(axis=1) & ~masked, jnp.argmax(hits, axis=1), top)


def sliced_label_ranks(mesh, scores, labels, history, top: int) -> jax.Array:
    """:func:`label_ranks` for scores split by item slices over the mesh's ``model`` axis.

    Each device masks and ranks its own slice, and only the ``top`` best of every slice are
    gathered and merged, so no device ever holds a whole N-wide row.  Candidates are merged in
    slice order, so ties still go to the lower item id, exactly as in :func:`label_ranks`.
    """
    from jax.sharding import PartitionSpec as P

    def local(scores, labels, history):
        width = scores.shape[1]
        offset = jax.lax.axis_index("model") * width
        inside = (history >= offset) & (history < offset + width)
        scores = mask_items(scores, jnp.where(inside, history - offset, width))
        values, best = jax.lax.top_k(scores, min(top, width))  # a slice may hold fewer items
        values = jax.lax.all_gather(values, "model", axis=1, tiled=True)
        best = jax.lax.all_gather(best + offset, "model", axis=1, tiled=True)
        _, merged = jax.lax.top_k(values, top)
        best = jnp.take_along_axis(best, merged, axis=1)
        own = (labels >= offset) & (labels < offset + width)
        label_scores = jnp.take_along_axis(scores, jnp.clip(labels - offset, 0, width - 1)[:, None],
                                           axis=1)[:, 0]
        masked = jax.lax.psum((own & (label_scores == -jnp.inf)).astype(jnp.int32), "model") > 0
        hits = best == labels[:, None]
        return jnp.where(hits.any(axis=1) & ~masked, jnp.argmax(hits, axis=1), top)

    # The ranks are the same on every device of a model group (they come from gathered and
    # summed values), which shard_map cannot infer: check_vma=False.
    return jax.shard_map(local, mesh=mesh, in_specs=(P("data", "model"), P("data"), P("data")),
                         out_specs=P("data"), check_vma=False)(scores, labels, history)


def metric_sums(ranks: jax.Array, weights: jax.Array, ks=KS) -> jax.Array:
    """Sums over users of HR@K and NDCG@K (one relevant item: NDCG = 1 / log2(rank + 2))."""
    sums = []
    for k in ks:
        hit = (ranks < k).astype(jnp.float32) * weights
        sums += [hit.sum(), jnp.sum(hit / jnp.log2(ranks.astype(jnp.float32) + 2.0))]
    return jnp.stack(sums)


# Evaluation rows run on their last W columns, W the smallest of these that holds the batch's
# longest history: outputs at real positions do not depend on the padding before them.
EVAL_WIDTHS = (8, 16, 32)


class RankingEvaluator:
    """Ranks one split (``"valid"`` or ``"test"``) for every user, in fixed-size batches.

    Users are grouped by history length (metrics are sums, so order is free) and each batch runs
    at the narrowest width in ``EVAL_WIDTHS`` (or the full width) that holds its rows.
    """

    def __init__(self, split: str, data: SequenceData, encode_last, batch_size: int, ks=KS,
                 place=jax.device_put, mesh=None):
        """``place`` puts a batch's arrays on the devices (split over the data axis of a mesh);
        with a ``mesh`` whose ``model`` axis splits the catalogue, ranking is per item slice."""
        inputs = getattr(data, f"{split}_inputs")
        labels = getattr(data, f"{split}_labels")
        history = getattr(data, f"{split}_history")
        self.split, self.ks, self.num_users = split, tuple(ks), len(labels)
        order = np.argsort((inputs != data.padding_id).sum(axis=1), kind="stable")
        order = np.pad(order, (0, -len(order) % batch_size), constant_values=-1)
        widths = [w for w in EVAL_WIDTHS if w < data.max_len] + [data.max_len]
        self._batches = []
        for users in order.reshape(-1, batch_size):
            real_users = users[users >= 0]
            weights = np.zeros(batch_size, np.float32)
            weights[: len(real_users)] = 1.0
            users = np.where(users >= 0, users, real_users[0])  # weight-0 fillers
            longest = int((inputs[users] != data.padding_id).sum(axis=1).max())
            width = next(w for w in widths if w >= longest)
            self._batches.append(tuple(map(place, (inputs[users, -width:], labels[users],
                                                   history[users], weights))))
        ranks = label_ranks
        if mesh is not None and mesh.shape["model"] > 1:
            ranks = functools.partial(sliced_label_ranks, mesh)
        self._step = jax.jit(functools.partial(self._batch_sums, encode_last, ranks, max(ks),
                                               self.ks))

    @staticmethod
    def _batch_sums(encode_last, ranks, top, ks, params, inputs, labels, history, weights):
        states = encode_last(params, inputs)  # [B, d]
        scores = states @ params["params"]["item_embedding"].T
        return metric_sums(ranks(scores, labels, history, top), weights, ks)

    def evaluate(self, params) -> dict[str, float]:
        total = sum(self._step(params, *batch) for batch in self._batches)
        values = np.asarray(total, dtype=np.float64) / self.num_users
        return dict(zip(metric_names(self.ks), values.tolist()))
