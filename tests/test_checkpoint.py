import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tests.helpers import EPOCHS, REPO, cli, run_cli, tensorboard_steps, tiny_train_args


def _wait_for(predicate, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _resume(tiny_dataset, run):
    done = subprocess.run(cli("train", "--resume", str(run), "--data-dir",
                               str(tiny_dataset / "data"), "--no-progress"),
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def test_sigkill_then_resume_gives_the_same_results(tiny_dataset, uninterrupted):
    run = tiny_dataset / "killed"
    process = subprocess.Popen(
        cli("train", *tiny_train_args(tiny_dataset, run), "--epochs", str(EPOCHS)),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "results.json").exists()
    done = _resume(tiny_dataset, run)
    assert "resuming" in done.stderr
    assert (run / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))
    # The TensorBoard files, rewritten from the checkpoint's history: each epoch once.
    assert tensorboard_steps(run, "loss/total") == list(range(1, EPOCHS + 1))


def test_kill_during_a_checkpoint_save_keeps_the_last_complete_one(tiny_dataset, uninterrupted):
    run = tiny_dataset / "killed_in_save"
    marker = tiny_dataset / "in_save"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.hang_in_save", str(marker), "train",
         *tiny_train_args(tiny_dataset, run), "--epochs", str(EPOCHS)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(marker.exists, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    latest = run / "checkpoints" / "latest"
    assert any(".orbax-checkpoint-tmp" in p.name for p in latest.iterdir())  # a partial save
    done = _resume(tiny_dataset, run)
    assert "after epoch 2" in done.stderr
    assert (run / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()


def _damage_data_files(checkpoint) -> None:
    """Flips one byte of each array data file: the sizes stay, the contents do not."""
    for path in (checkpoint / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))


def test_resume_falls_back_past_a_damaged_latest_checkpoint(tiny_dataset, uninterrupted):
    run = tiny_dataset / "damaged_latest"
    shutil.copytree(uninterrupted, run)
    _damage_data_files(run / "checkpoints" / "latest" / str(EPOCHS))
    done = _resume(tiny_dataset, run)
    assert f"checkpoint {EPOCHS} is damaged (state/d/" in done.stderr
    assert f"using checkpoint {EPOCHS - 1}" in done.stderr
    assert f"after epoch {EPOCHS - 1}" in done.stderr
    # The epoch is trained again, to the same results, and its checkpoint is whole again.
    assert (run / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()
    assert (run / "metrics.jsonl").read_text().count("\n") == EPOCHS
    code = subprocess.run(cli("evaluate", str(run), "--checkpoint", "latest", "--data-dir",
                               str(tiny_dataset / "data")), cwd=REPO, capture_output=True)
    assert code.returncode == 0, code.stderr


def test_a_damaged_best_checkpoint_is_named_with_what_is_left(tiny_dataset, uninterrupted,
                                                              tmp_path):
    run = tmp_path / "damaged_best"
    shutil.copytree(uninterrupted, run)
    best = run / "checkpoints" / "best"
    (epoch,) = [p.name for p in best.iterdir() if p.name.isdigit()]
    _damage_data_files(best / epoch)
    data = ["--data-dir", str(tiny_dataset / "data")]
    for command in (["evaluate", str(run)], ["recommend", str(run), "--user", "1"]):
        done = subprocess.run(cli(*command, *data), cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert f"checkpoint {epoch} is damaged (state/d/" in done.stderr, done.stderr
        assert f"intact: latest {EPOCHS}, latest {EPOCHS - 1}" in done.stderr, done.stderr


def test_a_failed_save_loses_nothing_and_the_run_resumes(tiny_dataset, uninterrupted, tmp_path):
    run = tmp_path / "disk_full"
    shutil.copytree(uninterrupted, run)
    latest = run / "checkpoints" / "latest"
    before = {p: p.read_bytes() for p in latest.rglob("*") if p.is_file()}
    largest = max(len(data) for data in before.values())
    resume = ["train", "--resume", str(run), "--data-dir", str(tiny_dataset / "data"),
              "--epochs", str(EPOCHS + 1), "--no-progress"]
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    # Every file of the run directory but the checkpoints' array data fits under the limit.
    done = subprocess.run([sys.executable, "-m", "tests.workers.file_size_limit", str(largest // 2),
                           *resume],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"could not save checkpoint {EPOCHS + 1} (File too large)" in last, done.stderr
    assert "intact" in last, done.stderr
    # Nothing the abandoned write left behind (its tasks' exceptions, unawaited coroutines).
    assert "Traceback" not in done.stderr and "never" not in done.stderr, done.stderr
    # The saved checkpoints are untouched.  Which save failed depends on how the array data is
    # split into files: when the latest checkpoint's pieces all fit, it is saved (rotating the
    # oldest out) and the best one fails; the run then resumes after the new epoch.
    kept = [p for p in before if p.exists()]
    assert {p: p.read_bytes() for p in kept} == {p: before[p] for p in kept}
    saved = EPOCHS + 1 if (latest / str(EPOCHS + 1)).is_dir() else EPOCHS
    assert len(kept) == len(before) or saved == EPOCHS + 1
    done = subprocess.run(cli(*resume), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and f"after epoch {saved}" in done.stderr, done.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, EPOCHS + 2))
    assert lines[:EPOCHS] == (uninterrupted / "metrics.jsonl").read_text().splitlines()


def test_resume_refuses_a_changed_config_but_allows_more_epochs(tiny_dataset, uninterrupted,
                                                                capsys):
    """More epochs, and another evaluation batch size (it changes no rank), are allowed."""
    run = tiny_dataset / "extended"
    shutil.copytree(uninterrupted, run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--data-dir",
                           str(tiny_dataset / "data"), "--set", "tau=0.2", "--set", "hidden=32")
    assert code == 2
    assert "tau (0.1 -> 0.2)" in err and "hidden (64 -> 32)" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "train", "--resume", str(run), "--data-dir",
                             str(tiny_dataset / "data"), "--epochs", str(EPOCHS + 1),
                             "--set", "eval_batch_size=24", "--no-progress")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["eval"]["eval_batch_size"] == 24
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, EPOCHS + 2))


def test_evaluate_the_best_checkpoint_reproduces_results(tiny_dataset, uninterrupted, capsys):
    code, out, err = run_cli(capsys, "evaluate", str(uninterrupted), "--data-dir",
                             str(tiny_dataset / "data"))
    assert code == 0, err
    evaluated = json.loads(out)
    results = json.loads((uninterrupted / "results.json").read_text())
    assert evaluated["epoch"] == results["best_epoch"]
    for split in ("valid", "test"):
        for name, value in results[split].items():
            assert abs(evaluated[split][name] - value) < 1e-6
    code, out, _ = run_cli(capsys, "evaluate", str(uninterrupted), "--data-dir",
                           str(tiny_dataset / "data"), "--checkpoint", "latest", "--split", "test")
    assert code == 0 and set(json.loads(out)) == {"checkpoint", "epoch", "test"}
    assert json.loads(out)["epoch"] == EPOCHS


def test_faulty_run_directories(tiny_dataset, uninterrupted, tmp_path):
    data = ["--data-dir", str(tiny_dataset / "data")]
    empty = tmp_path / "empty"
    empty.mkdir()
    no_checkpoints = tmp_path / "no_checkpoints"
    no_checkpoints.mkdir()
    shutil.copy(uninterrupted / "config.json", no_checkpoints)
    truncated = tmp_path / "truncated"
    shutil.copytree(uninterrupted, truncated)
    for path in (truncated / "checkpoints" / "best").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{not json")
    cases = [(tmp_path / "missing", "not a training run directory"),
             (empty, "not a training run directory"),
             (no_checkpoints, "no checkpoints"),
             (truncated, "is damaged"),
             (bad_config, "unreadable run config")]
    for run_dir, message in cases:
        # A separate process, as a user runs it: nothing may follow the one line at exit.
        done = subprocess.run(cli("evaluate", str(run_dir), *data), cwd=REPO,
                              capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == "", (run_dir, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1, (run_dir, done.stderr)


def test_a_checkpoint_serves_only_its_catalogue(tmp_path):
    """The restored progress names the catalogue it was trained on (older checkpoints did not
    record it: they are taken as the dataset's); another catalogue is refused in one line."""
    import pytest

    from mqsa_jax.errors import UserError
    from mqsa_jax.runs import checked_progress

    saved = {"epoch": 3, "shuffler": {}, "history": [], "best": None, "stale": 0,
             "config": {}, "num_items": 40, "partial": None}
    assert checked_progress(saved, 40, tmp_path).epoch == 3
    without = {k: v for k, v in saved.items() if k != "num_items"}
    assert checked_progress(without, 41, tmp_path).num_items == 41
    with pytest.raises(UserError, match="trained on 40 items, but the dataset now has 41"):
        checked_progress(saved, 41, tmp_path)
