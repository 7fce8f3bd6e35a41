import functools

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.blocked import catalogue_sums
from mqsa_jax.data.arrays import transition_counts
from mqsa_jax.losses import fused_losses, l2_penalty
from mqsa_jax.teacher import TeacherWeights

N, D = 25, 8


def _transitions(seed=0):
    rng = np.random.default_rng(seed)
    cut = np.full((30, 6), N, dtype=np.int32)
    for row in range(30):
        length = rng.integers(0, 7)
        cut[row, 6 - length:] = rng.integers(0, N - 5, length)  # items N-5.. never occur
    return transition_counts(cut, N, time_span=2)


def _reference_kd(table, heads, dropout_mask, tau, transitions):
    """The reference formula with dense N-wide teacher rows, in float64."""
    A = transitions.to_dense().astype(np.float64)
    E = np.asarray(table, np.float64)
    losses = []
    for head, keep in zip(heads, dropout_mask):
        a = A[head] / (A[head].max() + 1e-24) / tau
        y = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
        z = (E[head] * np.sqrt(D) * keep) @ E.T / tau
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        losses.append(-(y * np.log(p + 1e-24)).sum())
    return np.mean(losses)


def _teacher_rows(teacher, heads, weights):
    return teacher.rows(jnp.asarray(heads), jnp.asarray(weights))


def test_teacher_weights_are_the_reference_softmax():
    transitions = _transitions()
    teacher = TeacherWeights.from_transitions(transitions, tau=0.1)
    A = transitions.to_dense().astype(np.float64)
    a = A / (A.max(axis=1, keepdims=True) + 1e-24) / 0.1
    y = np.exp(a - a.max(axis=1, keepdims=True))
    np.testing.assert_allclose(teacher.dense(), y / y.sum(axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(teacher.dense()[N - 1], 1 / N)  # an item with no successors: uniform


def test_sparse_ted_equals_the_dense_reference():
    transitions = _transitions()
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.normal(size=(N, D)) * 0.5, jnp.float32)
    heads = np.array([0, 3, 3, 7, N - 1, 12])
    keep = (rng.random((len(heads), D)) < 0.5) * 2.0  # a dropout mask with its 1/(1-p) scale
    # Scales small enough that no probability underflows, and large enough that the 1e-24
    # inside the log matters for some items.
    for scale in (0.05, 0.5):
        for tau in (0.1, 0.05, 1.0):
            teacher = jax.device_put(TeacherWeights.from_transitions(transitions, tau))
            students = table[heads] * scale * np.sqrt(D) * keep / tau
            states = jnp.zeros((len(heads), D))
            weights = jnp.ones(len(heads))
            _, kd = fused_losses(states, jnp.zeros(len(heads), jnp.int32), weights, table,
                                 students, _teacher_rows(teacher, heads, weights))
            expected = _reference_kd(table, heads, keep * scale, tau, transitions)
            np.testing.assert_allclose(float(kd), expected, rtol=1e-5)


def test_packed_recommendation_loss_equals_a_dense_masked_loss():
    rng = np.random.default_rng(2)
    table = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    states = rng.normal(size=(4, 7, D)).astype(np.float32)
    targets = rng.integers(0, N + 1, (4, 7))  # N: padding, no target
    real = targets != N
    # Dense: logits over the N items plus the padding column (logit 0), masked mean.
    logits = np.concatenate([states @ np.asarray(table).T, np.zeros((4, 7, 1))], axis=-1)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, np.minimum(targets, N)[..., None], -1)[..., 0]
    expected = (ce * real).sum() / real.sum()
    # Packed into a buffer larger than the real count, padded rows weighted 0.
    positions = np.flatnonzero(real.ravel())
    capacity = len(positions) + 5
    packed = np.zeros(capacity, np.int64)
    packed[: len(positions)] = positions
    weights = (np.arange(capacity) < len(positions)).astype(np.float32)
    rec, kd = fused_losses(jnp.asarray(states.reshape(-1, D)[packed]),
                           jnp.asarray(np.minimum(targets.ravel()[packed], N - 1)),
                           jnp.asarray(weights), table)
    np.testing.assert_allclose(float(rec), expected, rtol=1e-5)
    assert float(kd) == 0.0


def test_l2_covers_every_array():
    params = {"a": jnp.ones((2, 3)), "b": {"c": jnp.full((4,), 2.0)}}
    assert float(l2_penalty(params)) == (6 + 16) / 2


def _dense_losses(states, targets, weights, table, students, heads, teacher_dense):
    """Both losses written plainly with [rows, N] arrays, differentiated by JAX: the reference
    for the blocked forms' values and gradients."""
    logits = jnp.concatenate([states @ table.T, jnp.zeros((len(states), 1))], axis=1)
    ce = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, targets[:, None], 1)[:, 0]
    count = weights.sum()
    rec = jnp.sum(ce * weights) / count
    log_p = jnp.log(jax.nn.softmax(students @ table.T, axis=1) + 1e-24)
    kd = -jnp.sum(teacher_dense[heads] * log_p, axis=1)
    return rec, jnp.sum(kd * weights) / count


def _nine_rows():
    """A teacher, a table [N, D] and nine rows' heads, states, targets and weights (two
    packing rows), for the blocked loss's tests."""
    host_teacher = TeacherWeights.from_transitions(_transitions(seed=4), 0.1)
    teacher = jax.device_put(host_teacher)
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.normal(size=(N, D)) * 0.4, jnp.float32)
    heads = jnp.asarray(rng.integers(0, N - 5, 9))
    states = jnp.asarray(rng.normal(size=(9, D)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, N, 9))
    weights = jnp.asarray([1.0] * 7 + [0.0] * 2)
    return (jnp.asarray(host_teacher.dense()), table, heads, states, targets, weights,
            _teacher_rows(teacher, heads, weights))


def test_blocked_losses_and_gradients_equal_the_dense_ones():
    teacher_dense, table, heads, states, targets, weights, rows = _nine_rows()

    # Jitted once per (block, slices): the four student scales reuse each compiled gradient.
    @functools.partial(jax.jit, static_argnums=(3, 4))
    @functools.partial(jax.grad, argnums=(0, 1, 2), has_aux=True)
    def blocked_grads(states, students, table, block, slices):
        rec, kd = fused_losses(states, targets, weights, table, students, rows, block,
                               catalogue_slices=slices)
        return rec + 0.3 * kd, (rec, kd)

    def dense_total(states, students, table):
        rec, kd = _dense_losses(states, targets, weights, table, students, heads, teacher_dense)
        return rec + 0.3 * kd, (rec, kd)

    # Students at scale 0.3 keep every probability far above the 1e-24 clamp; at 10 each has
    # some below 1e-15, far below the clamp too, and the clamp's correction is computed: for
    # no row, for one or two of the nine (gathered into the buffers of one and of two rows that
    # nine student rows get), and for all of them.
    for scales, clamped_rows in (([0.3] * 9, 0), ([10.0] + [0.3] * 8, 1),
                                 ([10.0] * 2 + [0.3] * 7, 2), ([10.0] * 9, 9)):
        students = table[heads] * jnp.asarray(scales)[:, None] * np.sqrt(D)
        log_p = jax.nn.log_softmax(students @ table.T, axis=1)
        assert int(jnp.sum(log_p.min(axis=1) < np.log(1e-15))) == clamped_rows
        dense, dense_losses = jax.grad(dense_total, argnums=(0, 1, 2), has_aux=True)(
            states, students, table)
        # The default block (one tail), partial last blocks, one block, a block past the end;
        # the table as one slice, or as a model-split mesh's slices, each blocked on its own.
        for block, slices in ((0, 1), (4, 1), (7, 1), (N, 1), (64, 1), (2, 5), (3, 5),
                              (N // 5, 5)):
            grads, losses = blocked_grads(states, students, table, block, slices)
            np.testing.assert_allclose(losses, dense_losses, rtol=1e-5)
            for a, b in zip(grads, dense):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Without distillation, too.
    def rec_only(t, b, s=1):
        return fused_losses(states, targets, weights, t, item_block=b,
                                                  catalogue_slices=s)[0]
    def dense_rec(t):
        return _dense_losses(states, targets, weights, t, table[heads], heads,
                                            teacher_dense)[0]
    for block, slices in ((0, 1), (5, 1), (3, 5)):
        np.testing.assert_allclose(jax.grad(rec_only)(table, block, slices),
                                   jax.grad(dense_rec)(table), rtol=1e-5, atol=1e-6)


def test_bfloat16_products_stay_within_bfloat16_resolution_of_float32():
    """bfloat16 operands, float32 accumulation: the scan's products really take bfloat16
    operands, and the losses and gradients (clamp included) move by bfloat16's rounding only."""
    _, table, heads, states, targets, weights, rows = _nine_rows()

    @functools.partial(jax.grad, argnums=(0, 1, 2), has_aux=True)
    def grads(states, students, table, block, slices, precision):
        rec, kd = fused_losses(states, targets, weights, table, students, rows, block,
                               precision, catalogue_slices=slices)
        return rec + 0.3 * kd, (rec, kd)

    jaxpr = str(jax.make_jaxpr(grads, static_argnums=(3, 4, 5))(
        states, table[heads], table, 4, 1, "bfloat16"))
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    compiled = jax.jit(grads, static_argnums=(3, 4, 5))
    for scale in (0.3, 10.0):  # no row clamped; every row clamped
        students = table[heads] * scale * np.sqrt(D)
        # One block (the default: XLA unrolls the scan), several, and a model-split mesh's.
        for block, slices in ((0, 1), (4, 1), (3, 5)):
            exact, exact_losses = compiled(states, students, table, block, slices, "float32")
            rounded, rounded_losses = compiled(states, students, table, block, slices,
                                               "bfloat16")
            np.testing.assert_allclose(rounded_losses, exact_losses, rtol=3e-3)
            assert not np.allclose(rounded_losses, exact_losses, rtol=1e-7, atol=0)
            for a, b in zip(rounded, exact):
                assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(b)


def test_lse_far_below_the_logit_bound_is_still_exact():
    """The one-pass lse sums against ``|row| max|item|``; an item of large norm orthogonal to
    the rows puts that bound hundreds above the rows' logits (every term underflows), and the
    running-maximum pass taken then still gives the exact lse and gradients, the student
    rows' clamp included."""
    rng = np.random.default_rng(7)
    table = rng.normal(size=(N, D)).astype(np.float32)
    table[:, 0] = 0.0
    table[N - 1] = 0.0
    table[N - 1, 0] = 400.0  # far larger than any other item, orthogonal to every row
    rows = rng.normal(size=(6, D)).astype(np.float32) * 3.0
    rows[:, 0] = 0.0
    rows[4:] *= 8.0  # the two student rows: some probabilities below 1e-15, clamped
    table, rows = jnp.asarray(table), jnp.asarray(rows)
    assert float(jnp.linalg.norm(rows, axis=1).min() * 400.0) > 300.0  # far above the logits

    def blocked(rows, table, block):
        lse, correction = catalogue_sums(rows, table, 4, N, block)
        return lse.sum() + correction.sum(), (lse, correction)

    def dense(rows, table):
        z = rows @ table.T
        lse = jax.nn.logsumexp(z, axis=1)
        log_p = z[4:] - lse[4:, None]
        correction = jnp.sum(jnp.log(jnp.exp(log_p) + 1e-24) - log_p, axis=1)
        return lse.sum() + correction.sum(), (lse, correction)

    exact, (lse, correction) = jax.grad(dense, argnums=(0, 1), has_aux=True)(rows, table)
    assert float(correction.min()) > 0
    for block in (4, N):
        grads, sums = jax.jit(jax.grad(blocked, argnums=(0, 1), has_aux=True),
                              static_argnums=2)(rows, table, block)
        np.testing.assert_allclose(sums[0], lse, rtol=1e-6)
        np.testing.assert_allclose(sums[1], correction, rtol=1e-5)
        for a, b in zip(grads, exact):  # float32 gradients of logits near 100
            assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)
