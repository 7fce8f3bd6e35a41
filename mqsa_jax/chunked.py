"""The N-wide loss terms over the catalogue in chunks, so memory does not grow with rows x N.

Same values as :func:`mqsa_jax.losses.fused_losses`, in the spirit of cut cross-entropy: the
forward pass scans the item table chunk by chunk (an online log-sum-exp, then the TED sums), and
a custom gradient recomputes each chunk's logits instead of keeping the ``[rows, N]`` matrix.
Peak memory is ``rows x chunk`` instead of ``rows x N``; the price is computing the logits three
times instead of once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_LOG_EPSILON = 1e-24


def _chunks(table: jax.Array, size: int):
    """The table as [chunks, size, d] (zero-padded) and each chunk's first item id."""
    n, d = table.shape
    count = -(-n // size)
    padded = jnp.pad(table, ((0, count * size - n), (0, 0)))
    return padded.reshape(count, size, d), jnp.arange(count) * size


def _chunk_logits(rows, chunk, start, n):
    """Logits against one chunk, -inf past the end of the catalogue."""
    ids = start + jnp.arange(chunk.shape[0])
    return jnp.where(ids[None, :] < n, rows @ chunk.T, -jnp.inf), ids


def _observed(values, successors, start, size):
    """``values`` [C, size] of one chunk at the successor ids that fall in it, else 0."""
    local = successors - start
    inside = (local >= 0) & (local < size)
    return jnp.where(inside, jnp.take_along_axis(values, jnp.clip(local, 0, size - 1), 1), 0.0)


def _forward(num_rec, size, rows, table, extra, successors):
    n = table.shape[0]
    chunks, starts = _chunks(table, size)

    def online_lse(carry, xs):
        running_max, running_sum = carry
        z, _ = _chunk_logits(rows, *xs, n)
        new_max = jnp.maximum(running_max, z.max(axis=1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(
            z - new_max[:, None]).sum(axis=1)
        return (new_max, running_sum), None

    init = (jnp.full(rows.shape[0], -jnp.inf), jnp.zeros(rows.shape[0]))
    (top, total), _ = jax.lax.scan(online_lse, init, (chunks, starts))
    lse = top + jnp.log(total)
    students, student_lse = rows[num_rec:], lse[num_rec:]

    def ted_sums(carry, xs):
        log_sum, q_sum, obs_log, obs_q = carry
        chunk, start = xs
        z, ids = _chunk_logits(students, chunk, start, n)
        p = jnp.exp(z - student_lse[:, None])
        real = ids[None, :] < n
        log_p = jnp.where(real, jnp.log(p + _LOG_EPSILON), 0.0)
        q = p / (p + _LOG_EPSILON)
        return (log_sum + log_p.sum(axis=1), q_sum + q.sum(axis=1),
                obs_log + (extra * _observed(log_p, successors, start, size)).sum(axis=1),
                obs_q + (extra * _observed(q, successors, start, size)).sum(axis=1)), None

    zeros = jnp.zeros(students.shape[0])
    (log_sum, q_sum, obs_log, obs_q), _ = jax.lax.scan(
        ted_sums, (zeros, zeros, zeros, zeros), (chunks, starts))
    return (lse[:num_rec], log_sum, obs_log), (lse, q_sum, obs_q)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def catalogue_sums(num_rec, size, rows, table, extra, successors):
    """Per row: the log-sum-exp of the first ``num_rec`` rows' logits, and for the remaining
    (student) rows ``sum_j log(p_ij + eps)`` and ``sum_r extra_ir log(p_i,succ_ir + eps)``."""
    return _forward(num_rec, size, rows, table, extra, successors)[0]


def _catalogue_sums_fwd(num_rec, size, rows, table, extra, successors):
    outputs, (lse, q_sum, obs_q) = _forward(num_rec, size, rows, table, extra, successors)
    return outputs, (rows, table, extra, successors, lse, q_sum, obs_q)


def _catalogue_sums_bwd(num_rec, size, residuals, cotangents):
    rows, table, extra, successors, lse, q_sum, obs_q = residuals
    g_lse, g_log_sum, g_obs_log = cotangents
    n = table.shape[0]
    chunks, starts = _chunks(table, size)

    def step(d_rows, xs):
        chunk, start = xs
        z, ids = _chunk_logits(rows, chunk, start, n)
        p = jnp.exp(z - lse[:, None])  # 0 past the catalogue's end
        rec_grad = p[:num_rec] * g_lse[:, None]
        ps = p[num_rec:]
        q = ps / (ps + _LOG_EPSILON)
        # d/dz of sum_j log(p_j + eps) is q - p Q; of the observed sum, extra * q at the
        # observed ids minus p times their total.
        local = successors - start
        inside = (local >= 0) & (local < size)
        scattered = jnp.zeros_like(ps).at[
            jnp.arange(ps.shape[0])[:, None], jnp.where(inside, local, size)].add(
            jnp.where(inside, extra, 0.0), mode="drop")
        student_grad = (g_log_sum[:, None] * (q - ps * q_sum[:, None])
                        + g_obs_log[:, None] * (scattered * q - ps * obs_q[:, None]))
        grad = jnp.where(ids[None, :] < n, jnp.concatenate([rec_grad, student_grad]), 0.0)
        return d_rows + grad @ chunk, grad.T @ rows

    d_rows, d_chunks = jax.lax.scan(step, jnp.zeros_like(rows), (chunks, starts))
    d_table = d_chunks.reshape(-1, table.shape[1])[:n]
    return d_rows, d_table, jnp.zeros_like(extra), None


catalogue_sums.defvjp(_catalogue_sums_fwd, _catalogue_sums_bwd)
