"""The first epoch's shapes compile ahead, on threads, once each, and change nothing."""

import threading

import jax
import numpy as np
from jax._src.dispatch import BACKEND_COMPILE_EVENT

from mqsa_jax.compile_ahead import batch_shape
from mqsa_jax.config import build_config
from mqsa_jax.trainer import Trainer
from tests.helpers import small_data


def test_the_first_epoch_compiles_each_shape_once_ahead_and_trains_as_without():
    data = small_data(max_len=10, num_users=300, max_length=16)
    config = build_config({"max_len": 10, "hidden": 16, "batch_size": 32, "eval_batch_size": 64})
    compiles = []

    def listen(event, seconds, fun_name="", **_):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append((fun_name, threading.current_thread().name))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        trainer = Trainer(config, data)
        state = trainer.init_state()
        order = np.random.default_rng(0).permutation(data.num_users)
        shapes = {batch_shape(batch) for batch, _ in trainer.packing.batches(order)}
        state, _ = trainer.train_epoch(state, order)
        trainer.evaluate(state.params)
    finally:
        jax._src.monitoring.unregister_event_duration_listener(listen)
    # Each shape once; the first may be the first step's own (it waits for it either way).
    steps = [thread for name, thread in compiles if name == "jit(train_step)"]
    assert len(shapes) > 1 and len(steps) == len(shapes), compiles
    assert sum(not thread.startswith("compile-ahead") for thread in steps) <= 1, compiles
    # The valid and test splits share their steps: each width compiles once, ahead.
    widths = set().union(*(e.first_batches() for e in trainer.evaluators))
    ranking = [thread for name, thread in compiles if name == "jit(_batch_sums)"]
    assert len(widths) > 1 and len(ranking) == len(widths), compiles
    assert all(thread.startswith("compile-ahead") for thread in ranking)

    # The same steps, compiled as each batch comes: the same parameters.
    reference = Trainer(config, data)
    expected = reference.init_state()
    for batch, _ in reference.packing.batches(order):
        expected, _ = reference.train_step(expected, reference.arrays, reference.place(batch))
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params)):
        np.testing.assert_array_equal(got, want)
