"""The jitted train step: the loss of a packed batch and one Adam update.

The step takes ``(state, arrays, batch)``: the train state, the device-resident data that every
step reads (the TED teacher), and one packed batch (:class:`mqsa_jax.packing.Batch`, whose
static widths fix the compiled shape).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.typing import VariableDict

from mqsa_jax.config import Config
from mqsa_jax.data.arrays import SequenceData
from mqsa_jax.losses import fused_losses, l2_penalty
from mqsa_jax.model import MQSA, item_table
from mqsa_jax.packing import Batch
from mqsa_jax.state import TrainState
from mqsa_jax.tables import lookup_rows
from mqsa_jax.teacher import TeacherWeights, ted_students

Losses = dict[str, jax.Array]  # loss, loss_rec, loss_kd: scalars
Step = Callable[[TrainState, "TrainArrays", Batch], tuple[TrainState, Losses]]


@flax.struct.dataclass
class TrainArrays:
    """Device-resident training data besides the batches: the TED teacher's rows."""

    teacher: TeacherWeights

    @classmethod
    def from_data(cls, data: SequenceData, config: Config) -> TrainArrays:
        return cls(teacher=TeacherWeights.from_transitions(data.transitions, config.loss.tau))


def make_loss_fn(model: MQSA, config: Config
                 ) -> Callable[[VariableDict, Batch, jax.Array, TeacherWeights],
                               tuple[jax.Array, Losses]]:
    """The loss of a batch (on a mesh, under its context: :meth:`Partitioner.activate`)."""
    loss_config = config.loss
    distill = loss_config.lambda_kd > 0

    def loss_fn(params: VariableDict, batch: Batch, key: jax.Array, teacher: TeacherWeights
                ) -> tuple[jax.Array, Losses]:
        """The mean losses of a packed batch's real targets (``mqsa_jax.packing``)."""
        real = batch.segments.reshape(-1) > 0
        positions = jnp.nonzero(real, size=batch.capacity, fill_value=0)[0]
        weights = (jnp.arange(batch.capacity) < real.sum()).astype(jnp.float32)
        student_key, model_key = jax.random.split(key)
        states = model.apply(params, batch.items, deterministic=False, rngs={"dropout": model_key},
                             segments=batch.segments, positions=batch.positions)
        states = states.reshape(-1, config.model.hidden)[positions]
        table = item_table(params)
        students = teacher_rows = None
        if distill:
            heads = batch.items.reshape(-1)[positions]
            head_rows = lookup_rows(table, heads, model.num_items, batch_split=False)
            students = ted_students(head_rows, student_key, config.model.dropout, loss_config.tau)
            teacher_rows = teacher.rows(heads, weights)
        rec, kd = fused_losses(states, batch.targets.reshape(-1)[positions], weights, table,
                               students, teacher_rows, loss_config.item_block,
                               loss_config.precision, num_items=model.num_items)
        loss = rec + loss_config.lambda_kd * kd + loss_config.l2_reg * l2_penalty(params)
        return loss, {"loss": loss, "loss_rec": rec, "loss_kd": kd}

    return loss_fn


def train_step_fn(model: MQSA, optimizer: optax.GradientTransformation, config: Config
                  ) -> Step:
    """The step ``(state, arrays, batch) -> (state, losses)``, not jitted: a partitioner jits it
    for its mesh (:meth:`mqsa_jax.partitioning.Partitioner.partition_step`)."""
    loss_fn = make_loss_fn(model, config)

    def train_step(state: TrainState, arrays: TrainArrays, batch: Batch
                   ) -> tuple[TrainState, Losses]:
        """One Adam step on a packed batch (``mqsa_jax.packing``)."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)
        grads, losses = jax.grad(loss_fn, has_aux=True)(state.params, batch, key, arrays.teacher)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), losses

    return train_step


def make_train_step(model: MQSA, optimizer: optax.GradientTransformation, config: Config
                    ) -> Step:
    """The step jitted for the default device, the state donated."""
    return jax.jit(train_step_fn(model, optimizer, config), donate_argnums=0)
