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


def _chunks(table: jax.Array, size: int, slices: int):
    """The table as [chunks, slices, size, d] and each chunk's start inside its slice.

    The rows are cut into ``slices`` equal slices (one per device of a model-split mesh, whose
    row split this is) and each slice into chunks of ``size`` rows, zero-padded: a scan step
    reads one chunk of every slice, each on the device that holds it.
    """
    n, d = table.shape
    local = n // slices
    count = -(-local // size)
    padded = jnp.pad(table.reshape(slices, local, d), ((0, 0), (0, count * size - local), (0, 0)))
    return padded.reshape(slices, count, size, d).swapaxes(0, 1), jnp.arange(count) * size


def _chunk_logits(rows, chunk, start, local):
    """[R, slices, size] logits against one chunk, -inf past the end of each slice."""
    real = start + jnp.arange(chunk.shape[1]) < local
    return jnp.where(real, jnp.einsum("rd,gsd->rgs", rows, chunk), -jnp.inf), real


def _successor_positions(successors, slice_index, start, local, size):
    """Where the successor ids fall in one slice's chunk, and whether they do.  An id of the
    next slice may land in this chunk's zero padding: log p and q are 0 there, so it adds 0."""
    position = successors - slice_index * local - start
    return position, (position >= 0) & (position < size)


def _observed(values, successors, start, local):
    """[C, R]: ``values`` [C, slices, size] of one chunk at the successor ids in it, else 0."""
    size = values.shape[2]

    def one_slice(slice_values, slice_index):
        position, inside = _successor_positions(successors, slice_index, start, local, size)
        picked = jnp.take_along_axis(slice_values, jnp.clip(position, 0, size - 1), 1)
        return jnp.where(inside, picked, 0.0)

    return jax.vmap(one_slice, in_axes=(1, 0))(values, jnp.arange(values.shape[1])).sum(0)


def _scatter_observed(extra, successors, start, local, slices, size):
    """[C, slices, size]: ``extra`` added at the successor ids that fall in one chunk."""
    def one_slice(slice_index):
        position, inside = _successor_positions(successors, slice_index, start, local, size)
        return jnp.zeros((len(extra), size), extra.dtype).at[
            jnp.arange(len(extra))[:, None], jnp.where(inside, position, size)].add(
            jnp.where(inside, extra, 0.0), mode="drop")

    return jax.vmap(one_slice, out_axes=1)(jnp.arange(slices))


def _forward(num_rec, size, slices, rows, table, extra, successors):
    local = table.shape[0] // slices
    chunks, starts = _chunks(table, size, slices)

    def online_lse(carry, xs):
        running_max, running_sum = carry
        z, _ = _chunk_logits(rows, *xs, local)
        new_max = jnp.maximum(running_max, z.max(axis=(1, 2)))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(
            z - new_max[:, None, None]).sum(axis=(1, 2))
        return (new_max, running_sum), None

    init = (jnp.full(rows.shape[0], -jnp.inf), jnp.zeros(rows.shape[0]))
    (top, total), _ = jax.lax.scan(online_lse, init, (chunks, starts))
    lse = top + jnp.log(total)
    students, student_lse = rows[num_rec:], lse[num_rec:]

    def ted_sums(carry, xs):
        log_sum, q_sum, obs_log, obs_q = carry
        chunk, start = xs
        z, real = _chunk_logits(students, chunk, start, local)
        p = jnp.exp(z - student_lse[:, None, None])
        log_p = jnp.where(real, jnp.log(p + _LOG_EPSILON), 0.0)
        q = p / (p + _LOG_EPSILON)
        return (log_sum + log_p.sum(axis=(1, 2)), q_sum + q.sum(axis=(1, 2)),
                obs_log + (extra * _observed(log_p, successors, start, local)).sum(axis=1),
                obs_q + (extra * _observed(q, successors, start, local)).sum(axis=1)), None

    zeros = jnp.zeros(students.shape[0])
    (log_sum, q_sum, obs_log, obs_q), _ = jax.lax.scan(
        ted_sums, (zeros, zeros, zeros, zeros), (chunks, starts))
    return (lse[:num_rec], log_sum, obs_log), (lse, q_sum, obs_q)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def catalogue_sums(num_rec, size, slices, rows, table, extra, successors):
    """Per row: the log-sum-exp of the first ``num_rec`` rows' logits, and for the remaining
    (student) rows ``sum_j log(p_ij + eps)`` and ``sum_r extra_ir log(p_i,succ_ir + eps)``.
    ``slices``: the table's row split over devices (1 on one device); it must divide N."""
    return _forward(num_rec, size, slices, rows, table, extra, successors)[0]


def _catalogue_sums_fwd(num_rec, size, slices, rows, table, extra, successors):
    outputs, (lse, q_sum, obs_q) = _forward(num_rec, size, slices, rows, table, extra,
                                            successors)
    return outputs, (rows, table, extra, successors, lse, q_sum, obs_q)


def _catalogue_sums_bwd(num_rec, size, slices, residuals, cotangents):
    rows, table, extra, successors, lse, q_sum, obs_q = residuals
    g_lse, g_log_sum, g_obs_log = cotangents
    n, d = table.shape
    local = n // slices
    chunks, starts = _chunks(table, size, slices)

    def step(d_rows, xs):
        chunk, start = xs
        z, real = _chunk_logits(rows, chunk, start, local)
        p = jnp.exp(z - lse[:, None, None])  # 0 past the end of each slice
        rec_grad = p[:num_rec] * g_lse[:, None, None]
        ps = p[num_rec:]
        q = ps / (ps + _LOG_EPSILON)
        # d/dz of sum_j log(p_j + eps) is q - p Q; of the observed sum, extra * q at the
        # observed ids minus p times their total.
        scattered = _scatter_observed(extra, successors, start, local, slices, size)
        student_grad = (g_log_sum[:, None, None] * (q - ps * q_sum[:, None, None])
                        + g_obs_log[:, None, None] * (scattered * q - ps * obs_q[:, None, None]))
        grad = jnp.where(real, jnp.concatenate([rec_grad, student_grad]), 0.0)
        return (d_rows + jnp.einsum("rgs,gsd->rd", grad, chunk),
                jnp.einsum("rgs,rd->gsd", grad, rows))

    d_rows, d_chunks = jax.lax.scan(step, jnp.zeros_like(rows), (chunks, starts))
    d_table = d_chunks.swapaxes(0, 1).reshape(slices, -1, d)[:, :local].reshape(n, d)
    return d_rows, d_table, jnp.zeros_like(extra), None


catalogue_sums.defvjp(_catalogue_sums_fwd, _catalogue_sums_bwd)
