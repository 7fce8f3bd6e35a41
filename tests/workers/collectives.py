"""The collectives of compiled train and evaluation steps on 8 devices, for several meshes, with
one step's losses and a check of the per-slice ranking; prints them as JSON.

    python -m tests.workers.collectives
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mqsa_jax.config import build_config
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.evaluation import label_ranks
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.trainer import Trainer
from tests.helpers import random_dataset

MOVES = ("all-gather", "all-to-all", "collective-permute")  # data that changes devices
data = build_sequence_data(random_dataset(num_users=96, num_items=803, max_length=18, seed=7),
                           max_len=16)
found, losses = {}, {}
for data_size, model, chunk in ((1, 1, 0), (1, 8, 0), (4, 2, 0), (1, 8, 256)):
    partitioner = Partitioner(data_size, model)
    trainer = Trainer(build_config({"max_len": 16, "batch_size": 96, "eval_batch_size": 48,
                                    "item_block": chunk}), data, partitioner)
    state = trainer.init_state()
    batch, _ = next(trainer.packing.batches(np.arange(96)))
    args = (trainer.arrays, trainer.place(batch))
    with partitioner.activate():
        train_hlo = trainer.train_step.lower(state, *args).compile().as_text()
        eval_hlo = trainer.evaluators[0].lowered(state.params, 0).compile().as_text()
    case = f"{data_size}x{model} chunk {chunk}"
    for step, hlo in (("train", train_hlo), ("eval", eval_hlo)):
        found[f"{step} {case}"] = [
            [kind, re.findall(r"\[([\d,]*)\]", line.split(" = ")[1].split(f" {kind}")[0])]
            for line in hlo.splitlines() for kind in MOVES if f" {kind}(" in line]
    with partitioner.activate():
        losses[case] = {k: float(v) for k, v in trainer.train_step(state, *args)[1].items()}
found["losses"] = losses

# Per-slice ranking against the plain one, with ties and masks straddling the slices: the
# states score exactly ``scores`` against an identity table split over 8 devices.
rng = np.random.default_rng(0)
scores = rng.integers(0, 6, (48, 800)).astype(np.float32)
labels = rng.integers(0, 800, 48)
history = np.where(rng.random((48, 30)) < 0.8, rng.integers(0, 800, (48, 30)), 800)
history[:4, 0] = labels[:4]
partitioner = Partitioner(1, 8)
with partitioner.activate():
    sliced = jax.jit(lambda s, t, y, h: label_ranks(s, t, y, h, 800, block=96, one_pass=0))(
        scores, jax.device_put(np.eye(800, dtype=np.float32),
                               NamedSharding(partitioner.mesh, P("model"))), labels, history)
plain = label_ranks(jnp.asarray(scores), jnp.eye(800), jnp.asarray(labels), jnp.asarray(history),
                    800)
found["same_ranks"] = bool((np.asarray(sliced) == np.asarray(plain)).all())
print(json.dumps(found))
