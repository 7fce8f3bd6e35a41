"""The same training on 8 (virtual CPU) devices, for several meshes, as on one device."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mqsa_jax.errors import UserError
from mqsa_jax.partitioning import parse_mesh
from tests.conftest import REPO

# Runs in fresh interpreters: the device count is fixed when JAX starts.
_TWO_EPOCHS = """
import json, sys
import numpy as np
from mqsa_jax.partitioning import Partitioner, maybe_initialize_distributed

maybe_initialize_distributed()
import jax
from mqsa_jax.config import Config
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.train import Trainer
from tests.helpers import random_dataset

data = build_sequence_data(random_dataset(num_users=96, num_items=48, max_length=18, seed=7),
                           max_len=16)
config = Config(max_len=16, batch_size=96, eval_batch_size=48)  # one batch: few shapes
results = {}
for mesh in json.loads(sys.argv[1]):
    trainer = Trainer(config, data, Partitioner(*mesh))
    state = trainer.init_state()
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(2):
        state, losses = trainer.train_epoch(state, rng.permutation(data.num_users))
        epochs.append({"losses": losses, **trainer.evaluate(state.params)})
    table = state.params["params"]["item_embedding"]
    epochs.append({"processes": jax.process_count(),
                   "shard_rows": table.addressable_shards[0].data.shape[0]})
    results["x".join(map(str, mesh))] = epochs
if jax.process_index() == 0:
    print(json.dumps(results))
"""


def _run(meshes, devices, processes=1):
    port = _free_port()
    commands = []
    for process in range(processes):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu")
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(process))
        commands.append(subprocess.Popen(
            [sys.executable, "-c", _TWO_EPOCHS, json.dumps(meshes)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [c.communicate(timeout=600) for c in commands]
    for command, (_, err) in zip(commands, outputs):
        assert command.returncode == 0, err[-3000:]
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _assert_same(epochs, reference, label):
    for ours, expected in zip(epochs[:2], reference[:2]):
        for name, value in expected["losses"].items():
            assert abs(ours["losses"][name] - value) <= 1e-4 * max(abs(value), 1e-6), label
        for split in ("valid", "test"):
            for name, value in expected[split].items():
                assert abs(ours[split][name] - value) <= 1e-4 * max(abs(value), 1e-3), label


@pytest.fixture(scope="module")
def one_device():
    return _run([[1, 1]], devices=1)["1x1"]


def test_meshes_match_one_device(one_device):
    results = _run([[8, 1], [4, 2], [1, 8]], devices=8)
    for mesh, epochs in results.items():
        _assert_same(epochs, one_device, mesh)
        # The item table (48 rows) is split by rows over the model axis.
        assert epochs[2]["shard_rows"] == 48 // int(mesh.split("x")[1])


def test_two_processes_match_one_device(one_device):
    results = _run([[4, 2]], devices=4, processes=2)
    _assert_same(results["4x2"], one_device, "2 processes, 4x2")
    assert results["4x2"][2]["processes"] == 2


def test_parse_mesh():
    assert parse_mesh("data=4,model=2") == (4, 2)
    assert parse_mesh("model=8") == (1, 8)
    assert parse_mesh(None) == (1, 1)
    for bad in ("data=0", "rows=2", "data=x"):
        with pytest.raises(UserError, match="expected data=N,model=M"):
            parse_mesh(bad)
