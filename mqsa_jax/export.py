"""What a trained run exports for use without this project: embeddings, a compiled scorer, and
user vectors.

``mqsa-jax export RUN OUT`` writes into OUT:

- ``item_embeddings.npz`` (the item and position tables, and the source item ids) and
  ``model_config.json``;
- ``scorer.stablehlo``: the model and its top-k as StableHLO (``jax.export``), the weights
  inside.  It takes ``histories`` [b, max_len] and ``exclude`` [b, w] int32 item indices
  (right-aligned histories, padding id N; the items to leave out, padded with N), for any b
  and w, and returns the top-k ``scores`` [b, k] and item ``indices`` [b, k].  Loading it needs
  jax and numpy only::

      scorer = jax.export.deserialize(bytearray(open("scorer.stablehlo", "rb").read()))
      scores, indices = scorer.call(histories, exclude)

  ``scorer.json`` gives max_len, the padding id and k; ``item_ids.json`` maps indices back to
  the source item ids;
- with ``--user-vectors``, ``user_vectors.npz``: each dataset user's state after its whole
  history (the query of nearest-neighbour retrieval: ``score = vector . item_embeddings``), with
  the user ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.data.arrays import pad_to_shape, right_aligned_tails
from mqsa_jax.data.dataset import full_sequences
from mqsa_jax.io import atomic_output, write_json_atomic, write_text_atomic
from mqsa_jax.model import item_table
from mqsa_jax.recommend import Recommender, top_items
from mqsa_jax.rounding import round_up

SCORER = "scorer.stablehlo"


def export_embeddings(recommender: Recommender, out_dir: Path, checkpoint: str) -> dict:
    """Writes ``item_embeddings.npz`` (tables and source ids) and ``model_config.json``."""
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


def export_scorer(recommender: Recommender, out_dir: Path, k: int) -> Path:
    """Writes the compiled scorer (StableHLO, batch and exclusion widths symbolic), its
    description and the item id map."""
    recommender.check_k(k)
    params, encode_last = recommender.params, recommender.model.encode_last

    def score(histories, exclude):
        return top_items(encode_last, params, histories, exclude, k)

    batch, width = jax.export.symbolic_shape("b, w")
    max_len = recommender.config.model.max_len
    exported = jax.export.export(jax.jit(score))(
        jax.ShapeDtypeStruct((batch, max_len), jnp.int32),
        jax.ShapeDtypeStruct((batch, width), jnp.int32))
    with atomic_output(out_dir / SCORER) as f:
        f.write(exported.serialize())
    write_json_atomic(out_dir / "scorer.json", {
        "file": SCORER, "k": k, "max_len": max_len, "padding_id": recommender.num_items,
        "inputs": {"histories": "int32 [b, max_len]: item indices, right-aligned, oldest first, "
                                "padded on the left with padding_id",
                   "exclude": "int32 [b, w]: item indices left out of the top-k (for example "
                              "the whole history), padded with padding_id"},
        "outputs": ["scores float32 [b, k]", "indices int32 [b, k]; -inf scores where fewer "
                                             "than k items are left"],
        "item_ids": "item_ids.json"})
    write_text_atomic(out_dir / "item_ids.json",
                      json.dumps(recommender.dataset.item_ids.tolist()) + "\n")
    return out_dir / SCORER


def export_user_vectors(recommender: Recommender, out_dir: Path,
                        batch_size: int = 1024) -> Path:
    """Writes ``user_vectors.npz``: ``vectors`` [U, d], each user's state after its whole
    history, and ``user_ids`` [U]."""
    items, offsets = full_sequences(recommender.dataset)
    inputs = right_aligned_tails(items, offsets, recommender.config.model.max_len,
                                 recommender.num_items)
    encode = jax.jit(recommender.model.encode_last)
    rows = round_up(len(inputs), batch_size)  # one shape for every batch
    padded = pad_to_shape(inputs, rows, inputs.shape[1], recommender.num_items)
    vectors = np.concatenate([np.asarray(encode(recommender.params, chunk))
                              for chunk in padded.reshape(-1, batch_size, inputs.shape[1])])
    path = out_dir / "user_vectors.npz"
    with atomic_output(path) as f:
        np.savez(f, vectors=vectors[:len(inputs)], user_ids=recommender.dataset.user_ids)
    return path
