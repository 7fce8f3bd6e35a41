"""Memory of the train and evaluation steps compiled for a million-item catalogue, TED on:
XLA's own analysis.

The N-wide losses are blocked (``mqsa_jax.blocked``) and TED's observed successors are visited
in chunks (``mqsa_jax.teacher``), so the step's temporary memory may grow with N only through
the item table's own arrays (its gradient, Adam's update of it), never with rows x N, however
many successors the teacher's rows have.  The ranking scans the table in blocks
(``mqsa_jax.evaluation.label_ranks``): its temporaries do not grow with N at all.  Nothing here
is run: the steps are only compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.config import build_config
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.evaluation import RankingEvaluator
from mqsa_jax.model import MQSA
from mqsa_jax.packing import Batch
from mqsa_jax.state import init_state, make_optimizer
from mqsa_jax.steps import TrainArrays, make_train_step
from mqsa_jax.teacher import TeacherWeights

USERS, MAX_LEN, HIDDEN = 256, 50, 64
CAPACITY = USERS * MAX_LEN  # every position a real target: the largest batch of the config
# A dense teacher: on average 2,000 observed successors per item (a popular item of a large log
# has tens of thousands), so the batch's rows times their successors is 25.6 million pairs.
SUCCESSORS = 2000


def _temp_bytes(num_items: int) -> int:
    """The temporary bytes XLA needs for one train step on ``num_items`` items."""
    config = build_config({"max_len": MAX_LEN, "hidden": HIDDEN, "batch_size": USERS})
    model = MQSA(config.model, num_items)
    optimizer = make_optimizer(config)
    state = jax.eval_shape(lambda: init_state(model, optimizer, config))
    nnz = num_items * SUCCESSORS

    def shape(n, dtype):
        return jax.ShapeDtypeStruct((n,), dtype)

    teacher = TeacherWeights(uniform=shape(num_items, jnp.float32),
                             extra_sum=shape(num_items, jnp.float32),
                             indptr=shape(num_items + 1, jnp.int32),
                             tails=shape(nnz, jnp.int32), extra=shape(nnz, jnp.float32))
    rows = jax.ShapeDtypeStruct((USERS, MAX_LEN), jnp.int32)
    batch = Batch(items=rows, targets=rows, segments=rows, positions=rows, capacity=CAPACITY)
    step = make_train_step(model, optimizer, config)
    compiled = step.lower(state, TrainArrays(teacher=teacher), batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_a_million_item_step_needs_no_rows_by_catalogue_memory():
    small, large = 250_000, 1_000_000
    small_bytes, large_bytes = _temp_bytes(small), _temp_bytes(large)
    table_bytes = HIDDEN * np.dtype(np.float32).itemsize  # one item's row
    # Per added item: a few table-sized arrays (the gradient, Adam's moments' updates, the
    # blocked passes' per-block gradients), not a row per packed target.
    per_item = (large_bytes - small_bytes) / (large - small)
    assert per_item <= 8 * table_bytes, per_item / table_bytes
    # And in all: far below one [rows, N] float32 array (51 GB here).
    rows_by_catalogue = CAPACITY * large * 4
    assert large_bytes < 8 * large * table_bytes + 2**30, (large_bytes, rows_by_catalogue)


def _eval_temp_bytes(num_items: int) -> int:
    """The temporary bytes XLA needs for one ranking step of 256 users on ``num_items``
    items."""
    config = build_config({"max_len": MAX_LEN, "hidden": HIDDEN})
    model = MQSA(config.model, num_items)
    params = jax.eval_shape(lambda: init_state(model, make_optimizer(config), config)).params
    users = config.eval.eval_batch_size
    rows = np.full((users, MAX_LEN), num_items, np.int32)
    rows[:, -1] = 0
    labels = np.zeros(users, np.int32)
    data = SequenceData(num_items=num_items, max_len=MAX_LEN, cut=rows, valid_labels=labels,
                        test_labels=labels, transitions=None)
    evaluator = RankingEvaluator("valid", data, model.encode_last, users)
    return evaluator.lowered(params).compile().memory_analysis().temp_size_in_bytes


def test_a_million_item_ranking_step_needs_no_rows_by_catalogue_memory():
    small, large = 250_000, 1_000_000
    small_bytes, large_bytes = _eval_temp_bytes(small), _eval_temp_bytes(large)
    assert large_bytes <= small_bytes * 1.01 + 2**20, (small_bytes, large_bytes)
    assert large_bytes < 256 * 4 * large, large_bytes  # far below [users, N] floats
