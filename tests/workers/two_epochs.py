"""Two epochs of a small random dataset on each mesh of MESHES_JSON (``[[data, model], ...]``);
process 0 prints each mesh's losses, metrics and table shard rows as JSON.

    python -m tests.workers.two_epochs MESHES_JSON

Run in a fresh interpreter: the device count is fixed when JAX starts.
"""

import json
import sys

import jax
import numpy as np

from mqsa_jax.config import build_config
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.model import item_table
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.processes import maybe_initialize_distributed
from mqsa_jax.trainer import Trainer
from tests.helpers import random_dataset

maybe_initialize_distributed()  # before anything touches the devices
data = build_sequence_data(random_dataset(num_users=96, num_items=45, max_length=18, seed=7),
                           max_len=16)
# One batch: few shapes.
config = build_config({"max_len": 16, "batch_size": 96, "eval_batch_size": 48})
results = {}
for mesh in json.loads(sys.argv[1]):
    trainer = Trainer(config, data, Partitioner(*mesh))
    state = trainer.init_state()
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(2):
        state, losses = trainer.train_epoch(state, rng.permutation(data.num_users))
        epochs.append({"losses": losses, **trainer.evaluate(state.params)})
    table = item_table(state.params)
    moments = [m for m in jax.tree.leaves(state.opt_state) if m.shape == table.shape]
    # The padding rows of the table and its moments, in the shards this process holds.
    padding = [np.asarray(shard.data)[max(data.num_items - (shard.index[0].start or 0), 0):]
               for x in [table, *moments] for shard in x.addressable_shards]
    epochs.append({"processes": jax.process_count(),
                   "shard_rows": table.addressable_shards[0].data.shape[0],
                   "padding_rows_zero": all(not p.any() for p in padding)})
    results["x".join(map(str, mesh))] = epochs
if jax.process_index() == 0:
    print(json.dumps(results))
