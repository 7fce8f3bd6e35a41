"""The same training on 8 (virtual CPU) devices, for several meshes, as on one device."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mqsa_jax.errors import UserError
from mqsa_jax.partitioning import parse_mesh
from tests.helpers import REPO


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
    out = _launch(["-m", "tests.workers.two_epochs", json.dumps(meshes)], devices, processes)[0]
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


def test_no_step_moves_the_item_table_or_a_catalogue_wide_array():
    """With the catalogue split over model (meshes 1x8 and 4x2, and 1x8 with 256-item blocks),
    no collective that moves data between devices carries the item table, a slice of it, or an
    array as wide as the catalogue: the lookups read rows where they live, the losses and the
    ranking reduce per slice (the ranking moves no data at all).  A step gives the single
    device's losses, and the per-slice ranking equals the plain one."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "tests.workers.collectives"], cwd=REPO, env=env,
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
