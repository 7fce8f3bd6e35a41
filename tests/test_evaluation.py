import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mqsa_jax import evaluation
from mqsa_jax.config import build_config
from mqsa_jax.evaluation import RankingEvaluator, label_ranks, metric_sums
from mqsa_jax.model import item_table
from mqsa_jax.trainer import Trainer
from tests.helpers import small_data


def _brute_force_rank(scores, label, history, top):
    scores = scores.astype(np.float64).copy()
    scores[[h for h in history if h < len(scores)]] = -np.inf
    if scores[label] == -np.inf:
        return top
    order = np.argsort(-scores, kind="stable")  # ties: lower id first
    rank = int(np.flatnonzero(order == label)[0])
    return min(rank, top)


@pytest.mark.parametrize("count", ["arithmetic", "comparison"])
@pytest.mark.parametrize("one_pass", [0, 4096])
def test_ranks_against_brute_force_with_ties_and_masks(count, one_pass):
    """Both forms of the N-wide count (the arithmetic one, and the comparisons that catalogues
    of 2^24 items or more fall back to), scanned in blocks that leave a tail or in one pass."""
    rng = np.random.default_rng(0)
    n, rows = 30, 60
    scores = rng.integers(0, 8, (rows, n)).astype(np.float32)  # many ties
    scores[1, 5] = 1e-30  # tiny scores: their differences are still counted exactly
    scores[1, 6] = 2e-30
    labels = rng.integers(0, n - 2, rows)  # real items, never padding
    labels[1] = 5
    # Up to 15 masked items of 30: the top 20 often holds masked (-inf) items.
    history = np.where(rng.random((rows, 15)) < 0.7, rng.integers(0, n, (rows, 15)), n)
    history[0, 0] = labels[0]  # a label in its own history can never be found
    # The states score exactly ``scores`` against an identity table whose last 2 rows are
    # padding (as a mesh pads the table): ranked below every item.
    below = 0 if count == "comparison" else evaluation.FLOAT_EXACT
    got = np.asarray(label_ranks(jnp.asarray(scores), jnp.eye(n), jnp.asarray(labels),
                                 jnp.asarray(history), n - 2, block=7, one_pass=one_pass,
                                 arithmetic_below=below))
    scores[:, -2:] = -np.inf
    expected = [_brute_force_rank(scores[r], labels[r], history[r], n - 2) for r in range(rows)]
    assert got.tolist() == expected
    assert got[0] == n - 2


def test_metric_sums():
    ranks = jnp.asarray([0, 4, 5, 9, 19, 20])
    weights = jnp.asarray([1, 1, 1, 1, 1, 0], jnp.float32)
    sums = np.asarray(metric_sums(ranks, weights))
    def ndcg(r):
        return 1 / np.log2(r + 2)
    expected = [2, ndcg(0) + ndcg(4), 4, ndcg(0) + ndcg(4) + ndcg(5) + ndcg(9),
                5, ndcg(0) + ndcg(4) + ndcg(5) + ndcg(9) + ndcg(19),
                1 / 1 + 1 / 5 + 1 / 6 + 1 / 10 + 1 / 20]  # MRR: the filler has weight 0
    np.testing.assert_allclose(sums, expected, rtol=1e-6)
    found = jnp.asarray([True, True, True, True, False, True])  # a label never findable
    assert float(metric_sums(ranks, weights, found=found)[-1]) == pytest.approx(
        expected[-1] - 1 / 20)


def test_evaluator_equals_brute_force_full_width_ranking():
    data = small_data(max_len=40, num_users=70, max_length=30)
    config = build_config({"max_len": 40, "hidden": 16, "eval_batch_size": 16})
    trainer = Trainer(config, data)
    params = trainer.init_state().params
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                          params)
    encode = trainer.model.encode_last
    for split in ("valid", "test"):
        inputs, labels, history = data.eval_rows(split)
        states = np.asarray(encode(params, inputs))
        scores = states @ np.asarray(item_table(params)).T
        ranks = np.array([_brute_force_rank(scores[u], labels[u], history[u], 20)
                          for u in range(data.num_users)])
        evaluator = RankingEvaluator(split, data, encode, batch_size=16)
        got = evaluator.evaluate(params)
        for k in (5, 10, 20):
            assert abs(got[f"HR@{k}"] - np.mean(ranks < k)) < 1e-6
            expected_ndcg = np.mean(np.where(ranks < k, 1 / np.log2(ranks + 2), 0))
            assert abs(got[f"NDCG@{k}"] - expected_ndcg) < 1e-6
        # Exact ranks (N where the label is masked), and MRR from them.
        n = data.num_items
        exact = np.array([_brute_force_rank(scores[u], labels[u], history[u], n)
                          for u in range(data.num_users)])
        assert evaluator.ranks(params).tolist() == exact.tolist()
        assert abs(got["MRR"] - np.mean(np.where(exact < n, 1 / (exact + 1), 0))) < 1e-6
