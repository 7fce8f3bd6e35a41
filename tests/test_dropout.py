import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mqsa_jax.dropout import Dropout, dropout, keep_mask

SHAPE = (300, 997)  # not a multiple of any word's fields: the last word is cut


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.75, 0.1])  # 1, 2, 2 bits per element; 0.1: 32
def test_masks_keep_each_element_independently_with_probability_one_minus_rate(rate):
    mask = np.asarray(keep_mask(jax.random.key(3), rate, SHAPE), np.float64).ravel()
    keep, n = 1 - rate, mask.size
    assert mask.shape == (n,) and abs(mask.mean() - keep) < 5 * np.sqrt(keep * rate / n)
    # Elements drawn from the same word (neighbours) and from different words are uncorrelated.
    centred = mask - mask.mean()
    for lag in (1, 2, 15, 16, 31, 32, 997):
        correlation = np.dot(centred[:-lag], centred[lag:]) / np.dot(centred, centred)
        assert abs(correlation) < 5 / np.sqrt(n), (lag, correlation)


def test_masks_follow_the_key():
    a, b = (keep_mask(jax.random.key(k), 0.5, SHAPE) for k in (1, 2))
    np.testing.assert_array_equal(a, keep_mask(jax.random.key(1), 0.5, SHAPE))
    assert 0.4 < float(jnp.mean(a != b)) < 0.6


def test_dropout_zeros_or_rescales_and_is_off_when_deterministic():
    x = jax.random.normal(jax.random.key(0), (64, 33))
    key = jax.random.key(5)
    y = np.asarray(dropout(x, key, 0.25))
    kept = np.asarray(keep_mask(key, 0.25, x.shape))
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert np.all(y[~kept] == 0)
    module = Dropout(0.25)
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    y = np.asarray(module.apply({}, x, deterministic=False, rngs={"dropout": key}))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert 0.6 < kept.mean() < 0.9
