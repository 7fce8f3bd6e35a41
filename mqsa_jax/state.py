"""The train state and its optimiser: what a checkpoint holds, and the template to restore it."""

from __future__ import annotations

from typing import Any

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


def init_state(model: MQSA, optimizer: optax.GradientTransformation, config: Config) -> TrainState:
    """Fresh parameters and optimiser moments from the config's seed."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    dummy = jnp.full((1, config.model.max_len), model.num_items, jnp.int32)
    params = model.init({"params": init_key}, dummy, deterministic=True)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      dropout_key=jax.random.key_data(dropout_key))
