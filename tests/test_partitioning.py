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


def _launch(argv: list[str], devices: int, processes: int = 1) -> list[str]:
    """Runs ``python *argv`` as ``processes`` cooperating JAX processes of ``devices`` CPU
    devices each; returns their outputs."""
    port = _free_port()
    commands = []
    for process in range(processes):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu")
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(process))
        commands.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    outputs = [c.communicate(timeout=600) for c in commands]
    for command, (_, err) in zip(commands, outputs):
        assert command.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _run(meshes, devices, processes=1):
    out = _launch(["-c", _TWO_EPOCHS, json.dumps(meshes)], devices, processes)[0]
    return json.loads(out.strip().splitlines()[-1])


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


_COLLECTIVES = """
import json, re
import numpy as np
from mqsa_jax.config import Config
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.partitioning import Partitioner
from mqsa_jax.train import Trainer
from tests.helpers import random_dataset

MOVES = ("all-gather", "all-to-all", "collective-permute")  # data that changes devices
data = build_sequence_data(random_dataset(num_users=96, num_items=800, max_length=18, seed=7),
                           max_len=16)
found, losses = {}, {}
for data_size, model, chunk in ((1, 1, 0), (1, 8, 0), (4, 2, 0), (1, 8, 256)):
    trainer = Trainer(Config(max_len=16, batch_size=96, eval_batch_size=48, logits_chunk=chunk),
                      data, Partitioner(data_size, model))
    state = trainer.init_state()
    batch, _ = next(trainer.packing.batches(np.arange(96)))
    args = (trainer.arrays, trainer.place(batch))
    train_hlo = trainer.train_step.lower(state, *args).compile().as_text()
    evaluator = trainer.evaluators[0]
    eval_hlo = evaluator._step.lower(state.params, *evaluator._batches[0]).compile().as_text()
    case = f"{data_size}x{model} chunk {chunk}"
    for step, hlo in (("train", train_hlo), ("eval", eval_hlo)):
        found[f"{step} {case}"] = [
            [kind, re.findall(r"\\[([\\d,]*)\\]", line.split(" = ")[1].split(f" {kind}")[0])]
            for line in hlo.splitlines() for kind in MOVES if f" {kind}(" in line]
    losses[case] = {k: float(v) for k, v in trainer.train_step(state, *args)[1].items()}
found["losses"] = losses

# Per-slice ranking against the plain one, with ties and masks straddling the slices.
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from mqsa_jax.evaluation import label_ranks, sliced_label_ranks
rng = np.random.default_rng(0)
scores = rng.integers(0, 6, (48, 800)).astype(np.float32)
labels = rng.integers(0, 800, 48)
history = np.where(rng.random((48, 30)) < 0.8, rng.integers(0, 800, (48, 30)), 800)
history[:4, 0] = labels[:4]
mesh = Partitioner(1, 8).mesh
sliced = jax.jit(lambda s, l, h: sliced_label_ranks(mesh, s, l, h, 20))(
    jax.device_put(scores, NamedSharding(mesh, P("data", "model"))), labels, history)
plain = label_ranks(jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(history), 20)
found["same_ranks"] = bool((np.asarray(sliced) == np.asarray(plain)).all())
print(json.dumps(found))
"""


def test_no_step_moves_the_item_table_or_a_catalogue_wide_array():
    """With the catalogue split over model (meshes 1x8 and 4x2, and 1x8 with 256-item blocks),
    no collective that moves data between devices carries the item table, a slice of it, or an
    array as wide as the catalogue: the lookups read rows where they live, the losses and the
    ranking reduce per slice (the ranking moves no data at all).  A step gives the single device's losses, and the per-slice
    ranking equals the plain one."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _COLLECTIVES], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("same_ranks")
    losses = found.pop("losses")  # one step from the same state: the same losses everywhere
    for case, values in losses.items():
        for name, value in values.items():
            assert value == pytest.approx(losses["1x1 chunk 0"][name], rel=1e-5), (case, name)
    # Each device counts, in its slice, the items that beat the label: only counts are summed.
    assert found["eval 1x8 chunk 0"] == [] and found["eval 4x2 chunk 0"] == []
    for step, moves in found.items():
        model = int(step.split(" ")[1].split("x")[1])
        # The table's rows (with the padding row, or not), whole or one device's slice.
        table_sizes = {800, 801, 800 // model, 800 // model + 1}
        for kind, shapes in moves:
            for shape in shapes:
                dims = {int(d) for d in shape.split(",") if d}
                assert not dims & table_sizes, (step, kind, shape)


def test_cli_train_resumes_under_two_processes_on_another_mesh(tiny_dataset, tmp_path):
    """A run started by `mqsa-jax train` on one device and resumed as two processes (4 devices
    each, mesh data=4,model=2) continues from its checkpoint, written by one process, and ends
    with the results of the same run on one device."""
    train = ["-m", "mqsa_jax.cli", "train", "--no-progress", "--data-dir",
             str(tiny_dataset / "data")]
    first = [*train, "--dataset", "tiny", "--set", "max_len=16", "--set", "batch_size=32",
             "--set", "eval_batch_size=64"]
    _launch([*first, "--epochs", "2", "--run-dir", str(tmp_path / "one")], devices=1)
    two = tmp_path / "two"
    _launch([*first, "--epochs", "1", "--run-dir", str(two)], devices=1)
    _launch([*train, "--resume", str(two), "--epochs", "2", "--mesh", "data=4,model=2"],
            devices=4, processes=2)
    history = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in
                 (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    for ours, expected in zip(history, reference):
        assert ours["loss"] == pytest.approx(expected["loss"], rel=1e-4)
        for split in ("valid", "test"):
            for name, value in expected[split].items():
                assert ours[split][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    results = json.loads((two / "results.json").read_text())
    expected = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["best_epoch"] == expected["best_epoch"]
    for name, value in expected["test"].items():
        assert results["test"][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    assert sorted(p.name for p in (two / "checkpoints" / "latest").iterdir()
                  if p.name.isdigit()) == ["1", "2"]
