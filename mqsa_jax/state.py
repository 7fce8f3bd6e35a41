"""The train state and its optimiser: what a checkpoint holds, and the template to restore it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mqsa_jax.config import Config
from mqsa_jax.model import MQSA


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    dropout_key: jax.Array  # raw key data (uint32), so that checkpoints store it as an array


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam with the release's (TensorFlow's) settings."""
    return optax.adam(config.train.learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def _boxed_state(model: MQSA, optimizer: optax.GradientTransformation,
                 config: Config) -> TrainState:
    """The fresh state with every parameter and moment boxed with its logical axis names."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    dummy = jnp.full((1, config.model.max_len), model.num_items, jnp.int32)
    params = model.init({"params": init_key}, dummy, deterministic=True)
    # Optax maps over the boxes' values, so the moments keep their parameter's names.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      dropout_key=jax.random.key_data(dropout_key))


def init_state(model: MQSA, optimizer: optax.GradientTransformation, config: Config) -> TrainState:
    """Fresh parameters and optimiser moments from the config's seed."""
    return nn.meta.unbox(_boxed_state(model, optimizer, config))


def logical_specs(model: MQSA, optimizer: optax.GradientTransformation, config: Config
                  ) -> Any:
    """The logical axis names of every leaf of the train state (a tree of ``PartitionSpec``,
    ``P()`` for the unnamed: the step, the dropout key, Adam's count); nothing is computed."""
    return nn.get_partition_spec(jax.eval_shape(lambda: _boxed_state(model, optimizer, config)))
