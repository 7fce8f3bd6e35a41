"""Runs that count steps: ``max_steps``, ``eval_every_steps``, resume inside an epoch, and the
progress lines of a log that is not a terminal."""

import json
import signal
import subprocess

from tests.helpers import REPO, cli, tiny_train_args

# 60 users in batches of 16: four steps an epoch.  Evaluations and checkpoints at steps 3
# (inside epoch 1), 4 (its end), 6 (inside epoch 2), 8 and 9; the run ends at step 9.
STEPS = ["--set", "batch_size=16", "--set", "eval_every_steps=3", "--epochs", "3"]


def _train(tiny_dataset, run, *extra, check=True):
    done = subprocess.run(cli("train", *tiny_train_args(tiny_dataset, run), *STEPS, *extra),
                          cwd=REPO, capture_output=True, text=True)
    assert not check or done.returncode == 0, done.stderr
    return done


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_max_steps_stops_inside_an_epoch_and_a_resume_continues_at_that_batch(tiny_dataset):
    whole = tiny_dataset / "steps_whole"
    done = _train(tiny_dataset, whole, "--set", "max_steps=9",
                  "--set", "log_every_seconds=0.000001")
    records = _records(whole)
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 3), (1, 4), (2, 6), (2, 8), (3, 9)]
    assert all("valid" in r for r in records)
    results = json.loads((whole / "results.json").read_text())
    assert results["best_step"] in (3, 4, 6, 8, 9)
    # Not a terminal: progress lines with the rates and the loss.
    progress = [line for line in done.stderr.splitlines() if "steps/s" in line]
    assert progress and "targets/s" in progress[0] and " loss " in progress[0], done.stderr

    stopped = tiny_dataset / "steps_stopped"
    _train(tiny_dataset, stopped, "--set", "max_steps=6")
    assert _records(stopped)[-1]["step"] == 6  # inside epoch 2
    resumed = subprocess.run(
        cli("train", "--resume", str(stopped), "--data-dir", str(tiny_dataset / "data"),
            "--no-progress", "--set", "max_steps=9"), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "at batch 2 of epoch 2" in resumed.stderr
    assert (stopped / "results.json").read_bytes() == (whole / "results.json").read_bytes()
    for ours, theirs in zip(_records(stopped), records, strict=True):
        for key in ("epoch", "step", "loss", "loss_rec", "loss_kd", "valid", "test"):
            assert ours[key] == theirs[key], key


def test_sigkill_of_a_step_counted_run_then_resume_gives_the_same_results(tiny_dataset):
    whole = tiny_dataset / "steps_reference"
    _train(tiny_dataset, whole)
    run = tiny_dataset / "steps_killed"
    process = subprocess.Popen(cli("train", *tiny_train_args(tiny_dataset, run), *STEPS),
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    import time

    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run(cli("train", "--resume", str(run), "--data-dir",
                              str(tiny_dataset / "data"), "--no-progress"),
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "resuming" in done.stderr, done.stderr
    assert (run / "results.json").read_bytes() == (whole / "results.json").read_bytes()
    assert [r["step"] for r in _records(run)] == [3, 4, 6, 8, 9, 12]


def test_periodic_evaluations_rank_a_sample_and_the_final_one_every_user(tiny_dataset):
    run = tiny_dataset / "steps_sampled"
    _train(tiny_dataset, run, "--set", "max_steps=5", "--set", "eval_users=20")
    records = _records(run)
    assert [(r["step"], r.get("eval_users")) for r in records] == [(3, 20), (4, 20), (5, None)]
    # The final record is the full ranking of the checkpoint it was taken at.
    done = subprocess.run(cli("evaluate", str(run), "--checkpoint", "latest", "--data-dir",
                              str(tiny_dataset / "data")), cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(done.stdout)
    assert evaluated["valid"] == records[-1]["valid"] and evaluated["test"] == records[-1]["test"]


def test_final_eval_sample_ranks_the_sample_at_the_end_too(tiny_dataset):
    """For logs too large to rank every user in a run: the last record is the sample's."""
    run = tiny_dataset / "steps_final_sample"
    _train(tiny_dataset, run, "--set", "max_steps=4", "--set", "eval_users=20", "--set",
           "final_eval=sample")
    records = _records(run)
    assert [(r["step"], r.get("eval_users")) for r in records] == [(3, 20), (4, 20)]
    refused = _train(tiny_dataset, tiny_dataset / "steps_bad", "--set", "final_eval=some",
                     check=False)
    message = "mqsa-jax: error: invalid config: final_eval must be all or sample, got 'some'"
    assert refused.returncode == 2 and refused.stderr.strip() == message, refused.stderr
