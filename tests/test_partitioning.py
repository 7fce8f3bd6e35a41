"""The same training on 8 (virtual CPU) devices, for several meshes, as on one device."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.benchmarks.multiprocess import local_process_envs
from mqsa_jax.data import registry
from mqsa_jax.errors import UserError
from mqsa_jax.partitioning import parse_mesh
from mqsa_jax.processes import size_cpu_thread_pool
from mqsa_jax.tables import padded_rows
from tests.helpers import EPOCHS, REPO, cli, tiny_train_args


def _launch(argv: list[str], devices: int, processes: int = 1) -> list[str]:
    """Runs ``python *argv`` as ``processes`` cooperating JAX processes of ``devices`` CPU
    devices each; returns their outputs."""
    commands = _start(argv, devices, processes)
    outputs = [c.communicate(timeout=600) for c in commands]
    for command, (_, err) in zip(commands, outputs):
        assert command.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _start(argv: list[str], devices: int, processes: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for env in local_process_envs(processes, devices)]


def _run(meshes, devices, processes=1):
    out = _launch(["-m", "tests.workers.two_epochs", json.dumps(meshes)], devices, processes)[0]
    return json.loads(out.strip().splitlines()[-1])


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
    """45 items: the table is padded to 46 rows on model=2 and 48 on model=8."""
    results = _run([[8, 1], [4, 2], [1, 8]], devices=8)
    for mesh, epochs in results.items():
        _assert_same(epochs, one_device, mesh)
        # The item table is split by rows over the model axis.
        model = int(mesh.split("x")[1])
        assert epochs[2]["shard_rows"] == padded_rows(45, model) // model
        assert epochs[2]["padding_rows_zero"]


@pytest.mark.scale
def test_sigterm_stops_two_processes_together_and_the_run_resumes_anywhere(
        tiny_dataset, uninterrupted, tmp_path):
    """Two processes of two devices each (mesh data=2,model=2, the layout of a pod slice) train
    the tiny dataset.  With several processes JAX's preemption service catches SIGTERM; the
    processes agree to stop after the same epoch's checkpoint (exit code 130).  The run,
    resumed on one device, ends with the metrics of the same run never interrupted."""
    run = tmp_path / "run"
    args = tiny_train_args(tiny_dataset, run)
    commands = _start(["-m", "mqsa_jax", "train", *args, "--epochs", "500", "--mesh",
                       "data=2,model=2"], devices=2, processes=2)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.is_file() or not metrics.read_text():
        assert time.monotonic() < deadline and all(c.poll() is None for c in commands)
        time.sleep(0.5)
    for command in commands:
        command.send_signal(signal.SIGTERM)
    errors = [c.communicate(timeout=60)[1] for c in commands]
    assert [c.returncode for c in commands] == [130, 130], errors
    assert "SIGTERM: stopped after epoch" in errors[0]
    stopped = len(metrics.read_text().splitlines())
    assert 1 <= stopped < 500
    resume = ["-m", "mqsa_jax", "train", "--resume", str(run), "--data-dir",
              str(tiny_dataset / "data"), "--no-progress"]
    _launch([*resume, "--epochs", str(max(stopped + 1, EPOCHS))], devices=1)
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(1, max(stopped + 1, EPOCHS) + 1))
    reference = [json.loads(line) for line in
                 (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    for ours, expected in zip(history, reference):
        _assert_same_epoch(ours, expected, f"epoch {expected['epoch']}")


def test_two_processes_of_two_devices_run_many_steps_without_stalling():
    """Steps with collectives over both axes (mesh data=2,model=2), two processes of two CPU
    devices each.  On a two-core machine XLA:CPU's default pool (a thread per core) let such
    steps stall within 50 of them; the pool sized by ``size_cpu_thread_pool`` runs all 300."""
    commands = _start(["-m", "tests.workers.gloo_steps", "300"], devices=2, processes=2)
    try:
        outputs = [c.communicate(timeout=300) for c in commands]
    except subprocess.TimeoutExpired:
        for command in commands:
            command.kill()
            command.wait()
        pytest.fail("two processes of two devices stalled in their steps' collectives")
    for command, (out, err) in zip(commands, outputs):
        assert command.returncode == 0, err[-3000:]
        assert out.strip().endswith("done 300")


def test_cpu_thread_pool_gets_two_threads_per_device_unless_sized_already(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"}
    size_cpu_thread_pool(env)
    assert env["PJRT_NPROC"] == "16"
    for sized in ({"PJRT_NPROC": "3"}, {"NPROC": "3"}):
        env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", **sized}
        size_cpu_thread_pool(env)
        assert env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", **sized}
    env = {}  # one device: the two cores' pool already has a spare thread
    size_cpu_thread_pool(env)
    assert env == {}


def test_parse_mesh():
    assert parse_mesh("data=4,model=2") == (4, 2)
    assert parse_mesh("model=8") == (1, 8)
    assert parse_mesh(None) == (1, 1)
    for bad in ("data=0", "rows=2", "data=x"):
        with pytest.raises(UserError, match="expected data=N,model=M"):
            parse_mesh(bad)


def test_no_step_moves_the_item_table_or_a_catalogue_wide_array():
    """With the catalogue (803 items: padded to 804 and 808 rows) split over model (meshes 1x8
    and 4x2, and 1x8 with 256-item blocks), no collective that moves data between devices
    carries the item table, a slice of it, or an array as wide as the catalogue: the lookups
    read rows where they live, the losses and the ranking reduce per slice (the ranking moves
    no data at all).  A step gives the single device's losses, and the per-slice ranking equals
    the plain one."""
    env = local_process_envs(1, 8)[0]
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
        # The table's rows (with the padding id's row, or not), whole or one device's slice.
        rows = padded_rows(803, model)
        table_sizes = {803, 804, rows, rows + 1, rows // model, rows // model + 1}
        for kind, shapes in moves:
            for shape in shapes:
                dims = {int(d) for d in shape.split(",") if d}
                assert not dims & table_sizes, (step, kind, shape)


@pytest.mark.scale
def test_a_dead_peer_is_said_in_one_line_with_how_to_resume(tiny_dataset, tmp_path):
    """One process of two is killed: the other says so, with the resume command, and ends."""
    run = tmp_path / "run"
    commands = _start(["-m", "mqsa_jax", "train", *tiny_train_args(tiny_dataset, run),
                       "--epochs", "500", "--mesh", "data=2,model=2"], devices=2, processes=2)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.is_file() or not metrics.read_text():
        assert time.monotonic() < deadline and all(c.poll() is None for c in commands)
        time.sleep(0.5)
    commands[1].send_signal(signal.SIGKILL)
    _, err = commands[0].communicate(timeout=180)
    assert commands[0].returncode != 0
    # The service may no longer answer for the dead process by name: "process 1" or "a peer".
    line = f"of this run stopped, so this one stops too; continue with: " \
           f"mqsa-jax train --resume {run}"
    # Said once, last, without a traceback or JAX's stack dump after the heartbeat timeout.
    last = err.strip().splitlines()[-1]
    assert line in last and "Traceback" not in err and err.count(line) == 1, err[-3000:]


# Real catalogues on 8 CPU devices, small enough for the suite: beauty's 12,101 items and toys'
# 11,924 split over no even model axis.  A small model, few large batches and no TED keep the
# compiled shapes (and so the time) down; the catalogue is the full one.  (TED's padding masks
# are checked on the 45- and 803-item catalogues above.)
_SMALL = ["--no-progress", "--set", "max_len=10", "--set", "hidden=16", "--set",
          "batch_size=4096", "--set", "eval_batch_size=4096", "--set", "lambda_kd=0"]


def _train(dataset, run_dir, epochs, mesh=None, devices=1, resume=False):
    where = ["--resume", str(run_dir)] if resume else ["--dataset", dataset, "--run-dir",
                                                       str(run_dir), *_SMALL]
    _launch(["-m", "mqsa_jax", "train", *where, "--epochs", str(epochs),
             *(["--mesh", mesh] if mesh else [])], devices)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_epoch(ours, expected, label):
    assert ours["epoch"] == expected["epoch"], label
    assert ours["loss"] == pytest.approx(expected["loss"], rel=1e-4), label
    for split in ("valid", "test"):
        for name, value in expected[split].items():
            assert ours[split][name] == pytest.approx(value, rel=1e-3, abs=1e-6), (label, name)


@pytest.mark.scale
def test_beauty_on_uneven_meshes_resumes_anywhere_and_serves_only_items(tmp_path):
    """Beauty's 12,101 items on model=8 and model=4 (12,104 rows each): an epoch on 1x8 gives
    the single device's metrics; that run, resumed on 1x1 (12,101 rows) and on 2x4, gives the
    same second epoch on both; the exported table has 12,101 rows and `recommend` ranks items
    only."""
    reference = _train("beauty", tmp_path / "one", epochs=1)
    run = tmp_path / "1x8"
    _assert_same_epoch(_train("beauty", run, 1, "data=1,model=8", devices=8)[0], reference[0],
                       "1x8")
    shutil.copytree(run, tmp_path / "2x4")
    single = _train("beauty", run, 2, "data=1,model=1", devices=1, resume=True)
    _assert_same_epoch(_train("beauty", tmp_path / "2x4", 2, "data=2,model=4", devices=8,
                              resume=True)[1], single[1], "1x8 resumed on 2x4 and on 1x1")

    out = tmp_path / "export"
    subprocess.run(cli("export", str(tmp_path / "2x4"), str(out)), check=True,
                   capture_output=True)
    with np.load(out / "item_embeddings.npz") as exported:
        assert exported["item_embeddings"].shape == (12101, 16)
    done = subprocess.run(cli("recommend", str(tmp_path / "2x4"), "--history", "0,1,2",
                              "--keep-history", "--k", "12101"),
                          check=True, capture_output=True, text=True)
    items = json.loads(done.stdout)["items"]
    assert sorted(items) == sorted(registry.load_dataset("beauty").item_ids.tolist())


@pytest.mark.scale
def test_toys_on_model_8_and_the_readmes_4x2_match_one_device(tmp_path):
    """Toys' 11,924 items, padded to 11,928 rows on model=8, and the README's one-host mesh
    data=4,model=2: 8 CPU devices in one process on this machine's cores, with no variable set
    by hand (the CPU pool is sized for the devices)."""
    reference = _train("toys", tmp_path / "one", epochs=1)
    for mesh in ("data=1,model=8", "data=4,model=2"):
        _assert_same_epoch(_train("toys", tmp_path / mesh, 1, mesh, devices=8)[0],
                           reference[0], f"toys {mesh}")


@pytest.fixture(scope="module")
def four_records(tmp_path_factory):
    """A data directory with ``records``: about 4,000 users, 4 TFDS records of 1,024."""
    from mqsa_jax.cli import main
    from mqsa_jax.data.importers import export_sasrec
    from tests.helpers import random_dataset

    root = tmp_path_factory.mktemp("records")
    export_sasrec(random_dataset(num_users=4000, num_items=150, max_length=8, seed=5),
                  root / "log.txt")
    assert main(["data", "import", str(root / "log.txt"), "--format", "sasrec", "--name",
                 "records", "--min-count", "1", "--data-dir", str(root / "data")]) == 0
    return root / "data"


def test_two_hosts_hold_half_the_users_each_and_give_one_process_metrics(four_records,
                                                                          tmp_path):
    """Mesh data=2 over two processes: each loads, trains and ranks its own users only, and
    the run's losses and metrics are the single process's (no dropout: the same randomness)."""
    train = ["-m", "mqsa_jax", "train", "--dataset", "records", "--data-dir", str(four_records),
             "--no-progress", "--epochs", "1", "--set", "max_len=8", "--set", "hidden=16",
             "--set", "dropout=0", "--set", "batch_size=512", "--set", "eval_batch_size=512"]
    _launch([*train, "--run-dir", str(tmp_path / "one")], devices=1)
    commands = _start([*train, "--run-dir", str(tmp_path / "two"), "--mesh", "data=2"],
                      devices=1, processes=2)
    outputs = [c.communicate(timeout=600) for c in commands]
    for command, (_, err) in zip(commands, outputs):
        assert command.returncode == 0, err[-3000:]
    held = [re.search(r"process (\d) holds users ([\d,]+) to ([\d,]+) of ([\d,]+)", err).groups()
            for _, err in outputs]
    (p0, a0, b0, total), (p1, a1, b1, total1) = (
        [int(x.replace(",", "")) for x in h] for h in held)
    assert (p0, p1, a0, total) == (0, 1, 0, total1) and a1 == b0 + 1 and b1 == total - 1
    assert 0.4 < (b0 + 1) / total < 0.6  # whole records of 1,024 users each
    one, two = (_records(tmp_path / name) for name in ("one", "two"))
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == [1]
    for ours, expected in zip(two, one):
        assert ours["loss"] == pytest.approx(expected["loss"], rel=1e-4)
        for split in ("valid", "test"):
            for name, value in expected[split].items():
                assert ours[split][name] == pytest.approx(value, rel=1e-3, abs=1e-6), name


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
