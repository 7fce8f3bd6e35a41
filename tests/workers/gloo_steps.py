"""Many small steps, each with collectives over both axes of a data=2,model=2 mesh, as one of
two processes of two CPU devices; prints "done STEPS" when every step has run.

    python -m tests.workers.gloo_steps STEPS

Each step reads item rows with the sharded lookup (all-reduces over ``model``), gathers packed
rows across ``data`` as the loss does, and sums gradients over both.  Before
:func:`mqsa_jax.processes.size_cpu_thread_pool`, such a program stalled within its first
50 steps on a two-core machine (XLA:CPU's default pool of one thread per core).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mqsa_jax.partitioning import Partitioner
from mqsa_jax.processes import maybe_initialize_distributed
from mqsa_jax.tables import lookup_rows

maybe_initialize_distributed()
steps = int(sys.argv[1])
partitioner = Partitioner(2, 2)
mesh = partitioner.mesh
num_items, width, rows, columns = 1000, 32, 64, 50


def loss_fn(params, ids):
    table, weights = params
    states = jnp.tanh(lookup_rows(table, ids) @ weights).reshape(-1, width)
    packed = jnp.nonzero(ids.reshape(-1) > 3, size=rows * columns // 2, fill_value=0)[0]
    return jax.nn.logsumexp(states[packed] @ table.T, axis=-1).mean()


@jax.jit
def step(params, ids):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids)
    return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads), loss


rng = np.random.default_rng(0)
with partitioner.activate():
    params = (jax.device_put(rng.normal(size=(num_items, width)).astype(np.float32),
                             NamedSharding(mesh, P("model"))),
              jax.device_put(np.eye(width, dtype=np.float32), NamedSharding(mesh, P())))
    local = slice(rows // 2 * jax.process_index(), rows // 2 * (jax.process_index() + 1))
    for _ in range(steps):
        ids = rng.integers(0, num_items, size=(rows, columns)).astype(np.int32)
        ids = jax.make_array_from_process_local_data(partitioner.batch, ids[local], ids.shape)
        params, loss = step(params, ids)
    jax.block_until_ready(loss)
print(f"done {steps}", flush=True)
