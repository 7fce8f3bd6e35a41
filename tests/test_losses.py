import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.data.arrays import transition_counts
from mqsa_jax.losses import TeacherWeights, fused_losses, l2_penalty

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
            _, kd = fused_losses(states, jnp.zeros(len(heads), jnp.int32), jnp.ones(len(heads)),
                                 table, students, teacher.rows(jnp.asarray(heads)))
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


def test_chunked_losses_and_gradients_equal_the_plain_ones():
    transitions = _transitions(seed=4)
    teacher = jax.device_put(TeacherWeights.from_transitions(transitions, 0.1))
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.normal(size=(N, D)) * 0.4, jnp.float32)
    heads = jnp.asarray(rng.integers(0, N, 9))
    states = jnp.asarray(rng.normal(size=(9, D)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, N, 9))
    weights = jnp.asarray([1.0] * 7 + [0.0] * 2)
    rows = teacher.rows(heads)

    def total(states, students, table, chunk, slices):
        rec, kd = fused_losses(states, targets, weights, table, students, rows, chunk,
                               catalogue_slices=slices)
        return rec + 0.3 * kd, (rec, kd)

    for scale in (0.3, 3.0):  # the second scale makes the 1e-24 clamp matter
        students = table[heads] * scale * np.sqrt(D)
        grad = jax.grad(total, argnums=(0, 1, 2), has_aux=True)
        plain, plain_losses = grad(states, students, table, 0, 1)
        # A partial last chunk, one chunk, a chunk past the end; the table as one slice, or as
        # a model-split mesh's slices, each chunked on its own (partial chunks in each).
        for chunk, slices in ((4, 1), (7, 1), (N, 1), (64, 1), (2, 5), (3, 5), (N // 5, 5)):
            chunked, chunked_losses = grad(states, students, table, chunk, slices)
            np.testing.assert_allclose(chunked_losses, plain_losses, rtol=1e-5)
            for a, b in zip(chunked, plain):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Without distillation, too.
    rec_only = lambda t, c, s=1: fused_losses(states, targets, weights, t, chunk=c,
                                              catalogue_slices=s)[0]
    for chunk, slices in ((5, 1), (3, 5)):
        np.testing.assert_allclose(jax.grad(rec_only)(table, chunk, slices),
                                   jax.grad(rec_only)(table, 0), rtol=1e-5, atol=1e-6)
