"""Which compiled shape each batch runs at (mqsa_jax.step_shapes): the fewest compilations where
nothing covers a batch, padding until a shape's padding has cost a compilation, the same losses
at a larger shape, and the same choices after a resume."""

import jax
import numpy as np
import pytest

from mqsa_jax.config import build_config
from mqsa_jax.step_shapes import ShapePlan, largest
from mqsa_jax.trainer import Trainer
from tests.helpers import small_data


def _plan(cost=2.0):
    return ShapePlan(compile_cost_steps=cost, row_weight=0.0)  # the work is the capacity


def test_the_largest_shapes_cover_the_rest():
    shapes = [(32, 512), (40, 256), (24, 512), (40, 256), (16, 768)]
    assert largest(shapes) == {(32, 512), (40, 256), (16, 768)}


def test_a_window_compiles_only_what_covers_it_and_a_shape_compiles_once_its_padding_cost_that():
    plan = _plan(cost=2.5)
    # Nothing compiled: the largest shape of the window covers the others, which run padded.
    assert plan.assign([(8, 512), (8, 1024), (8, 512)]) == [(8, 1024)] * 3
    assert plan.compiled == {(8, 1024)}
    assert plan.padding == {(8, 512): 2 * (1024 / 512 - 1)}  # two of its own steps
    # A third padded batch would bring its padding to 3 steps, past 2.5: it compiles instead.
    assert plan.assign([(8, 768), (8, 512)]) == [(8, 1024), (8, 512)]
    assert plan.compiled == {(8, 1024), (8, 512)}
    # (8, 768) runs on the cheapest cover, a third of a step of padding each time, until its
    # eighth batch.
    assert plan.assign([(8, 768)] * 7) == [(8, 1024)] * 6 + [(8, 768)]
    assert plan.padding == {}
    # Nothing covers (16, 256): it compiles at once.
    assert plan.assign([(16, 256)]) == [(16, 256)]


def test_no_compile_cost_means_every_shape_its_own():
    plan = _plan(cost=0.0)
    shapes = [(8, 512), (8, 1024), (16, 256)]
    assert plan.assign(shapes) == shapes and not plan.padding


def test_a_restored_plan_makes_the_same_choices():
    rng = np.random.default_rng(0)
    windows = [[(int(r), int(c)) for r, c in zip(rng.choice([8, 16], 16),
                                                  rng.choice([256, 512, 768], 16))]
               for _ in range(6)]
    plan = _plan(cost=3.0)
    for window in windows[:3]:
        plan.assign(window)
    restored = _plan(cost=3.0)
    restored.restore(plan.to_json())
    assert [plan.assign(w) for w in windows[3:]] == [restored.assign(w) for w in windows[3:]]


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_batch_at_a_larger_shape_gives_the_same_losses_and_step(dropout):
    # Dropout on: each position's mask bits do not depend on the padded array's size.
    data = small_data(max_len=10, num_users=40, max_length=16)
    config = build_config({"max_len": 10, "hidden": 16, "dropout": dropout, "batch_size": 32})
    trainer = Trainer(config, data)
    batch, _ = next(trainer.packing.batches(np.arange(data.num_users)))
    rows, capacity = batch.shape
    bigger = batch.padded(rows + 8, capacity + 512, data.padding_id)
    assert bigger.shape == (rows + 8, capacity + 512)
    results = [trainer.train_step(trainer.init_state(), trainer.arrays, b) for b in (batch, bigger)]
    (state, losses), (padded_state, padded_losses) = jax.device_get(results)
    for key in ("loss", "loss_rec", "loss_kd"):
        np.testing.assert_allclose(padded_losses[key], losses[key], rtol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 padded_state.params, state.params)
