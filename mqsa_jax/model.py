"""MQSA: multi-query self-attention (reference, section Model), in flax.linen.

One branch is a stack of L-query blocks for one query window; the branches are one module mapped
with ``nn.vmap`` over the windows, so their parameters are stacked along a leading axis and any
number of windows costs one fused computation.  SASRec is the one-branch case ``windows=(1,)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import VariableDict

from mqsa_jax.config import ModelConfig
from mqsa_jax.dropout import Dropout
from mqsa_jax.tables import BRANCH, EMBED, HIDDEN, ITEM, POSITION, lookup_rows, padded_rows

# The release masks attention scores with this value, not -inf.
_MASK_VALUE = -(2.0**32) + 1
# The release's LayerNorm uses 1e-24; any epsilon that keeps all-zero (padding) rows finite is
# equivalent for real rows, whose variance is many orders of magnitude larger.
_LN_EPSILON = 1e-8

_dense_init = nn.initializers.xavier_uniform()  # tf.layers.dense's default, as in the release
_embedding_init = nn.initializers.normal(stddev=0.01)
_partitioned = nn.with_logical_partitioning


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=_LN_EPSILON, use_fast_variance=False, name=name,
                        scale_init=_partitioned(nn.initializers.ones, (EMBED,)),
                        bias_init=_partitioned(nn.initializers.zeros, (EMBED,)))


def _dense(features: int, axes: tuple[str, str], name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=_partitioned(_dense_init, axes),
                    bias_init=_partitioned(nn.initializers.zeros, axes[1:]), name=name)


def _item_table_init(num_items: int):
    """The release's N(0, 0.01) rows for the ``num_items`` real items, then zero rows: the
    real rows are the unpadded table's, whatever the padding."""
    def init(key, shape, dtype=jnp.float32):
        real = _embedding_init(key, (num_items, shape[1]), dtype)
        return jnp.pad(real, ((0, shape[0] - num_items), (0, 0)))

    return init


def window_average(h: jax.Array, mask: jax.Array, segments: jax.Array | None,
                   window: jax.Array) -> jax.Array:
    """Mean of the real items among the last ``window`` positions of the same segment (0 where
    there are none).

    ``window`` may be traced (it differs between vmapped branches): a band matrix selects, for
    each position t, the positions t - window < s <= t of t's segment.

    Args:
      h: [B, T, d], zero at padding.
      mask: [B, T], 1 at real items.
      segments: [B, T], which sequence each position belongs to when rows hold several; None
        when each row holds one.
      window: the window length.

    Returns:
      [B, T, d].
    """
    positions = jnp.arange(h.shape[1])
    offset = positions[:, None] - positions[None, :]
    band, subscripts = (offset >= 0) & (offset < window), "ts"  # one band for every row
    if segments is not None:  # or one per row, within segments
        band, subscripts = band[None] & _same_segment(segments), "bts"
    band = band.astype(h.dtype)
    total = jnp.einsum(f"{subscripts},bsd->btd", band, h)
    count = jnp.einsum(f"{subscripts},bs->bt", band, mask)
    return total / (count + 1e-24)[..., None]


def _same_segment(segments: jax.Array) -> jax.Array:
    """[B, T] -> [B, T, T]: whether two positions of a row belong to the same sequence."""
    return segments[:, :, None] == segments[:, None, :]


class QueryBlock(nn.Module):
    """Self-attention whose query is the normalised window average of the input."""

    hidden: int
    num_heads: int
    dropout: float
    deterministic: bool

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array, segments: jax.Array | None,
                 window: jax.Array) -> jax.Array:
        batch, length, _ = h.shape
        head_dim = self.hidden // self.num_heads
        q = _layer_norm()(window_average(h, mask, segments, window))

        def project(x, name):
            y = _dense(self.hidden, (EMBED, HIDDEN), name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim)

        queries, keys, values = project(q, "query"), project(h, "key"), project(h, "value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", queries, keys) / jnp.sqrt(head_dim)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        visible = causal[None, None] & (mask[:, None, None, :] > 0)
        if segments is not None:
            visible = visible & _same_segment(segments)[:, None]
        weights = jax.nn.softmax(jnp.where(visible, scores, _MASK_VALUE), axis=-1)
        weights = Dropout(self.dropout)(weights, deterministic=self.deterministic)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, values).reshape(batch, length, -1)

        o = _layer_norm()(attended + q)  # the residual goes to the normalised query
        inner = nn.relu(_dense(self.hidden, (EMBED, HIDDEN), "ffn_in")(o))
        inner = Dropout(self.dropout)(inner, deterministic=self.deterministic)
        outer = _dense(self.hidden, (HIDDEN, EMBED), "ffn_out")(inner)
        o = o + Dropout(self.dropout)(outer, deterministic=self.deterministic)
        return o * mask[..., None]


class Branch(nn.Module):
    """A stack of query blocks for one window, then a final LayerNorm."""

    hidden: int
    num_heads: int
    num_blocks: int
    dropout: float
    deterministic: bool

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array, segments: jax.Array | None,
                 window: jax.Array) -> jax.Array:
        for index in range(self.num_blocks):
            h = QueryBlock(self.hidden, self.num_heads, self.dropout, self.deterministic,
                           name=f"block_{index}")(h, mask, segments, window)
        return _layer_norm(name="final_norm")(h)


class MQSA(nn.Module):
    """Encodes left-padded item sequences (padding id ``num_items``) into fused states [B, T, d].

    ``params['item_embedding']`` is the item table ``E``: N rows, rounded up to a multiple of
    ``row_multiple`` with zero rows (so that a mesh's devices hold equal slices) that no lookup
    reads and no softmax includes (:mod:`mqsa_jax.tables`).  The padding id reads a zero row.
    Every parameter carries logical axis names (``nn.with_logical_partitioning``).
    """

    config: ModelConfig
    num_items: int
    row_multiple: int = 1

    @nn.compact
    def __call__(self, sequences: jax.Array, *, deterministic: bool,
                 segments: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """Fused states [B, T, d] of ``sequences`` [B, T].

        Rows are left-padded sequences, one per row, unless ``segments`` [B, T] (0 at padding)
        says which sequence each position belongs to and ``positions`` [B, T] gives each
        position's index in the position table (that of its place in a left-padded row of
        ``max_len``): then a row may hold several (``mqsa_jax.packing``).
        """
        config = self.config
        items = self.param("item_embedding",
                           _partitioned(_item_table_init(self.num_items), (ITEM, EMBED)),
                           (padded_rows(self.num_items, self.row_multiple), config.hidden))
        position_table = self.param("position_embedding",
                                    _partitioned(_embedding_init, (POSITION, EMBED)),
                                    (config.max_len, config.hidden))
        if segments is None:
            position_rows = position_table[-sequences.shape[1]:]
        else:
            position_rows = position_table[positions]
        mask = (sequences != self.num_items).astype(items.dtype)
        x = scale_embeddings(lookup_rows(items, sequences, self.num_items)) + position_rows
        x = Dropout(config.dropout)(x, deterministic=deterministic) * mask[..., None]

        branches = nn.vmap(
            Branch,
            in_axes=(None, None, None, 0),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            axis_size=len(config.windows),
            metadata_params={nn.PARTITION_NAME: BRANCH},
        )(config.hidden, config.num_heads, config.num_blocks, config.dropout, deterministic,
          name="branches")
        states = branches(x, mask, segments, jnp.asarray(config.windows))  # [branches, B, T, d]
        return jnp.einsum("n,nbtd->btd", jnp.asarray(config.window_weights, states.dtype),
                          states)

    def encode_last(self, params: VariableDict, inputs: jax.Array) -> jax.Array:
        """The state [B, d] at the last position of each row [B, T]: what the next item is
        predicted from."""
        return self.apply(params, inputs, deterministic=True)[:, -1]


def scale_embeddings(rows: jax.Array) -> jax.Array:
    """Item rows [..., d] times sqrt(d), as the release scales every embedding lookup (the
    encoder's input and TED's students)."""
    return rows * jnp.sqrt(float(rows.shape[-1]))


def item_table(params: VariableDict) -> jax.Array:
    """The item table E [R, d] of the model's parameters (R >= N: padded on a mesh)."""
    return params["params"]["item_embedding"]


def with_item_table(params: VariableDict, table: jax.Array) -> VariableDict:
    """The parameters with ``table`` as their item table (the others shared, not copied)."""
    return {**params, "params": {**params["params"], "item_embedding": table}}


def item_scores(params: VariableDict, states: jax.Array) -> jax.Array:
    """Every row's score [B, R] for states [B, d]: ``states . E^T`` (R >= N: padded on a
    mesh)."""
    return states @ item_table(params).T
