import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mqsa_jax.config import build_config
from mqsa_jax.model import MQSA, Branch, item_table, window_average

N, T = 30, 12


def _model(**overrides):
    config = build_config({"max_len": T, "hidden": 16, "num_heads": 2, "num_blocks": 2,
                           **overrides})
    model = MQSA(config.model, N)
    params = nn.meta.unbox(model.init({"params": jax.random.key(0)}, jnp.full((1, T), N),
                                      deterministic=True))
    # Trained-looking weights: perturb LayerNorm scales and biases away from 1 and 0.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    return model, params


def _sequences(rng, rows=6):
    seqs = np.full((rows, T), N, dtype=np.int32)
    for row in range(rows):
        length = rng.integers(1, T + 1)
        seqs[row, T - length:] = rng.integers(0, N, length)
    return seqs


def test_window_average_against_a_loop():
    rng = np.random.default_rng(0)
    mask = (rng.random((3, T)) < 0.7).astype(np.float32)
    segments = np.sort(rng.integers(1, 4, (3, T)), axis=1) * (mask > 0)  # up to 3 a row
    h = rng.normal(size=(3, T, 4)).astype(np.float32) * mask[..., None]
    for window, packed in itertools.product((1, 2, 3, 5), (True, False)):
        got = np.asarray(window_average(jnp.asarray(h), jnp.asarray(mask),
                                        jnp.asarray(segments) if packed else None,
                                        jnp.asarray(window)))
        for b in range(3):
            for t in range(T):
                span = [s for s in range(max(0, t - window + 1), t + 1)
                        if not packed or segments[b, s] == segments[b, t]]
                count = sum(mask[b, s] for s in span)
                expected = sum(h[b, s] for s in span) / count if count else np.zeros(4)
                np.testing.assert_allclose(got[b, t], expected, atol=1e-6)


def test_packed_rows_give_each_sequence_its_own_states():
    """Several sequences in one row (``mqsa_jax.packing``) get the states of their own rows."""
    model, params = _model()
    seqs = _sequences(np.random.default_rng(7), rows=5)
    lengths = (seqs != N).sum(axis=1)
    alone = np.asarray(model.apply(params, seqs, deterministic=True))
    # Row 0 holds sequences 0 and 1 (if they fit), row 1 the others as far as they fit, each
    # segment starting where the previous one ends.
    items = np.full((5, T), N, np.int32)
    segments, positions = np.zeros((5, T), np.int32), np.zeros((5, T), np.int32)
    row, column, placed = 0, 0, []
    for k, length in enumerate(lengths):
        if column + length > T:
            row, column = row + 1, 0
        items[row, column:column + length] = seqs[k, T - length:]
        segments[row, column:column + length] = k + 1
        positions[row, column:column + length] = np.arange(T - length, T)
        placed.append((row, column))
        column += length
    assert any(np.count_nonzero(np.unique(r)) > 1 for r in segments)  # some row is shared
    packed = np.asarray(model.apply(params, items, deterministic=True, segments=segments,
                                    positions=positions))
    for k, (row, column) in enumerate(placed):
        np.testing.assert_allclose(packed[row, column:column + lengths[k]],
                                   alone[k, T - lengths[k]:], atol=1e-5)


def test_causality():
    model, params = _model()
    seqs = _sequences(np.random.default_rng(1))
    base = model.apply(params, seqs, deterministic=True)
    for cut in (T - 1, T - 4, T - 7):
        changed = seqs.copy()
        changed[:, cut:] = (changed[:, cut:] + 5) % N
        out = model.apply(params, changed, deterministic=True)
        real_before = seqs[:, :cut] != N
        np.testing.assert_allclose(np.asarray(out[:, :cut])[real_before],
                                   np.asarray(base[:, :cut])[real_before], atol=1e-5)


def test_left_padding_never_changes_outputs():
    model, params = _model()
    seqs = _sequences(np.random.default_rng(2))
    seqs[:, :4] = N  # every row fits in the last T - 4 columns
    full = model.apply(params, seqs, deterministic=True)
    narrow = model.apply(params, seqs[:, 4:], deterministic=True)
    real = seqs[:, 4:] != N
    np.testing.assert_allclose(np.asarray(narrow)[real], np.asarray(full[:, 4:])[real], atol=1e-5)


@pytest.mark.parametrize("windows, weights", [((1, 3), (0.5, 0.5)), ((1, 2, 4), (0.2, 0.3, 0.5))])
def test_vmapped_branches_equal_branches_one_by_one(windows, weights):
    model, params = _model(windows=windows, window_weights=weights)
    seqs = _sequences(np.random.default_rng(3))
    fused = np.asarray(model.apply(params, seqs, deterministic=True))

    p = params["params"]
    table = jnp.concatenate([p["item_embedding"], jnp.zeros((1, 16))])
    mask = (seqs != N).astype(np.float32)
    x = (table[seqs] * 4.0 + p["position_embedding"]) * mask[..., None]
    branch = Branch(16, 2, 2, 0.5, True)
    segments = (seqs != N).astype(np.int32)
    states = [branch.apply({"params": jax.tree.map(lambda v, b=b: v[b], p["branches"])},
                           x, mask, segments, jnp.asarray(w)) for b, w in enumerate(windows)]
    expected = sum(w * s for w, s in zip(weights, states))
    np.testing.assert_allclose(fused, np.asarray(expected), atol=1e-5)

    # Fusing states before the logits matmul equals fusing per-branch logits.
    E = p["item_embedding"]
    per_branch = sum(w * np.asarray(s[:, -1] @ E.T) for w, s in zip(weights, states))
    np.testing.assert_allclose(np.asarray(fused[:, -1] @ E.T), per_branch, atol=1e-5)


def test_sasrec_is_the_one_branch_case():
    model, params = _model(windows=(1,), window_weights=(1.0,))
    assert jax.tree.leaves(params["params"]["branches"])[0].shape[0] == 1
    out = model.apply(params, _sequences(np.random.default_rng(4)), deterministic=True)
    assert np.isfinite(np.asarray(out)).all()


def test_padding_rows_and_dropout():
    model, params = _model()
    seqs = np.full((2, T), N, dtype=np.int32)
    seqs[0, -1] = 3
    out = model.apply(params, seqs, deterministic=False, rngs={"dropout": jax.random.key(5)})
    assert np.isfinite(np.asarray(out)).all()
    assert item_table(params).shape == (N, 16)
