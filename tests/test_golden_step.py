"""Golden values: the losses of the first two train steps on a tiny fixed dataset, pinned.

Any change to the model, the losses, the dropout masks, the packing or the optimiser moves these
numbers far beyond the tolerance, which only absorbs float summation order across CPUs.  When a
change is meant to alter them, rerun with ``MQSA_PRINT_GOLDEN=1`` and say why in the commit.
"""

import os

import jax
import numpy as np
import pytest

from mqsa_jax.config import build_config
from mqsa_jax.trainer import Trainer
from tests.helpers import small_data

GOLDEN = {
    # Written at commit 6a749b0's numerics (the refactor into steps/runs/state changed none).
    "float32": [
        {"loss": 8.123879432678223, "loss_rec": 3.746950387954712, "loss_kd": 43.4834098815918},
        {"loss": 7.984603404998779, "loss_rec": 3.825467109680176, "loss_kd": 41.30556106567383},
    ],
    # bfloat16 operands in the N-wide products (float32 accumulation): products of bfloat16
    # numbers are exact in float32, so only the summation order varies across CPUs.
    "bfloat16": [
        {"loss": 8.125055313110352, "loss_rec": 3.7471201419830322, "loss_kd": 43.49346923828125},
        {"loss": 7.984395503997803, "loss_rec": 3.8253581523895264, "loss_kd": 41.30457305908203},
    ],
}


@pytest.mark.parametrize("precision", sorted(GOLDEN))
def test_the_first_two_steps_give_the_pinned_losses(precision):
    data = small_data(max_len=10, num_users=40, num_items=30, max_length=16, seed=5)
    config = build_config({"max_len": 10, "hidden": 16, "batch_size": 16, "seed": 11,
                           "precision": precision})
    trainer = Trainer(config, data)
    state = trainer.init_state()
    # Trained-looking weights (numpy's generator: the same on every machine), so that the
    # student's softmax is far from uniform and every term of the loss moves the total.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape, np.float32),
                          state.params)
    state = state.replace(params=params, opt_state=trainer.optimizer.init(params))
    losses = []
    for batch, _ in trainer.packing.batches(np.arange(32)):
        state, step_losses = trainer.train_step(state, trainer.arrays, trainer.place(batch))
        losses.append({k: float(v) for k, v in step_losses.items()})
    if os.environ.get("MQSA_PRINT_GOLDEN"):
        print(losses)
    assert len(losses) == len(GOLDEN[precision])
    for got, expected in zip(losses, GOLDEN[precision]):
        assert got == pytest.approx(expected, rel=2e-5)
