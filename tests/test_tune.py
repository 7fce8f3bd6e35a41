"""``mqsa-jax tune``: a search end to end, two processes on one study, SIGKILL then resume, and
bad search spaces."""

import json
import os
import signal
import socket
import subprocess
import time

import optuna
import pytest

from mqsa_jax.config import build_config, read_run_config
from mqsa_jax.config_files import load_config_file
from mqsa_jax.errors import UserError
from mqsa_jax.rundir import RunDir
from mqsa_jax.search_space import parse_param
from mqsa_jax.tune import open_study
from tests.helpers import REPO, cli, run_cli

SMALL = ["--set", "max_len=16", "--set", "batch_size=32", "--set", "eval_batch_size=64"]
SPACE = ["--param", "dropout=0.1:0.6", "--param", "learning_rate=log:1e-4:1e-2",
         "--param", "lambda_kd=0,0.1"]


def _tune_args(tiny_dataset, study_dir, trials: int, epochs: int = 2) -> list[str]:
    return ["tune", "--dataset", "tiny", "--data-dir", str(tiny_dataset / "data"), *SMALL,
            *SPACE, "--trials", str(trials), "--epochs", str(epochs), "--study-dir",
            str(study_dir)]


def _study(study_dir) -> optuna.Study:
    return optuna.load_study(study_name="mqsa-jax", storage=f"sqlite:///{study_dir}/study.db")


def test_a_tiny_search_end_to_end(tiny_dataset, tmp_path, capsys):
    study_dir = tmp_path / "study"
    code, out, err = run_cli(capsys, *_tune_args(tiny_dataset, study_dir, trials=2))
    assert code == 0, err
    summary = json.loads((study_dir / "summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    # The base config comes first (the space holds its values).
    assert summary["trials"][0]["params"] == {"dropout": 0.5, "learning_rate": 0.001,
                                              "lambda_kd": 0.1}
    best = max(summary["trials"], key=lambda t: t["value"])
    assert json.loads(out)["best"]["number"] == best["number"]
    run = study_dir / "trials" / best["run"]
    # Every trial is an ordinary run; the objective is its best validation figure.
    assert best["value"] == RunDir(run).results()["valid"]["NDCG@20"]
    assert best["params"]["dropout"] == read_run_config(run).model.dropout
    # The best config is a config file train takes, and it is that run's config.
    best_config = build_config(load_config_file(study_dir / "best_config.py"))
    assert best_config == read_run_config(run) and best_config.train.epochs == 2
    assert "| trial | run | state |" in (study_dir / "summary.md").read_text()
    # What the search spent, from the database: both trials' epochs, CPU time and machine.
    spent = summary["budget"]
    assert (spent["complete"], spent["pruned"], spent["failed"]) == (2, 0, 0)
    assert spent["epochs_trained"] == 4 and spent["cpu_timed_trials"] == 2
    assert spent["cpu_seconds"] > 0 and len(spent["machines"]) == 1
    assert "Budget: 2 trials counted (2 complete, 0 pruned)" in (
        study_dir / "summary.md").read_text()
    assert {"metric_over_trials.png", "param_dropout.png"} <= set(summary["plots"])
    # Asked again for the same size, the study is complete: no trial runs.
    code, out, _ = run_cli(capsys, *_tune_args(tiny_dataset, study_dir, trials=2))
    assert code == 0 and json.loads(out)["trials"] == 2
    # A trial another live process runs counts towards the size: with it, a study of 3 starts
    # none, and one of 4 runs one more (N trials, as one process would run, not N + 1).
    running = _study(study_dir).ask()
    for key, value in (("host", socket.gethostname()), ("pid", os.getpid()), ("run", "9999")):
        running.set_user_attr(key, value)
    for size, complete in ((3, 2), (4, 3)):
        code, _, _ = run_cli(capsys, *_tune_args(tiny_dataset, study_dir, trials=size))
        states = [t.state.name for t in _study(study_dir).get_trials()]
        assert code == 0 and states.count("COMPLETE") == complete and "RUNNING" in states


def test_two_processes_share_one_study(tiny_dataset, tmp_path):
    study_dir = tmp_path / "study"
    args = cli(*_tune_args(tiny_dataset, study_dir, trials=4))
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)  # the study exists before the second process opens it
    second = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    trials = _study(study_dir).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    runs = [t.user_attrs["run"] for t in trials]
    pids = {t.user_attrs["pid"] for t in trials}
    # Four, or five where both finished a trial at the same moment and both went on.
    assert len(trials) in (4, 5) and len(set(runs)) == len(runs) and len(pids) == 2


def test_sigkill_then_resume_counts_each_trial_once(tiny_dataset, tmp_path):
    study_dir = tmp_path / "study"
    epochs = 40
    process = subprocess.Popen(cli(*_tune_args(tiny_dataset, study_dir, 1, epochs)), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = RunDir(study_dir / "trials" / "0000")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(_epochs(metrics)) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= len(_epochs(metrics)) < epochs
    done = subprocess.run(cli(*_tune_args(tiny_dataset, study_dir, 1, epochs)), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "taking up trial run 0000" in done.stderr and "resuming" in done.stderr
    trials = _study(study_dir).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].params == trials[1].params
    # The killed attempt's CPU time up to its last epoch stays in the search's budget.
    assert trials[0].user_attrs["cpu_seconds"] > 0
    assert _epochs(metrics) == list(range(1, epochs + 1))  # each epoch once, none again


def _epochs(run: RunDir) -> list[int]:
    return [r["epoch"] for r in run.metrics()] if run.metrics_file.exists() else []


@pytest.mark.parametrize("params, message", [
    (["nope=1:2"], "--param nope=1:2: unknown config key 'nope'"),
    (["dropout=0.6:0.2"], "--param dropout=0.6:0.2: empty range"),
    (["dropout=0.1:1.5"], "dropout=1.5 is refused (invalid config: dropout must be in [0, 1)"),
    (["learning_rate=log:0:0.1"], "a log range needs LOW above 0"),
    (["windows=1,3"], "windows holds several values"),
    (["hidden=a:b"], "--param hidden=a:b: expected int values"),
    (["dropout"], "expected NAME=LOW:HIGH"),
    (["tau=0.1,0.2", "loss.tau=0.3:0.5"], "tau is searched twice"),
    ([], "tune needs a search space"),
])
def test_bad_search_spaces_are_one_line_before_any_trial(tmp_path, capsys, params, message):
    study_dir = tmp_path / "study"
    code, out, err = run_cli(capsys, "tune", "--dataset", "toys", "--trials", "2",
                             "--study-dir", str(study_dir),
                             *[a for p in params for a in ("--param", p)])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not study_dir.exists()


def test_a_space_file_holds_the_same_lines(tmp_path, capsys):
    space = tmp_path / "space.txt"
    space.write_text("# regularisation\ndropout=0.1:0.5\n\ntau=0.05,0:5  # bad\n")
    code, _, err = run_cli(capsys, "tune", "--dataset", "toys", "--trials", "1",
                           "--space", str(space), "--study-dir", str(tmp_path / "s"))
    assert code == 2 and f"{space}:4 tau=0.05,0:5: expected float values" in err


def test_a_study_outlives_config_fields_added_at_their_default(tmp_path):
    """A study started before a config field existed (its record lacks the field) is the same
    study while the field holds its default, and another one once it does not."""
    space = [parse_param("dropout=0.1:0.6")]
    base = build_config({"dataset": "toys"})
    study = open_study(tmp_path, None, "s", space, base)
    study.set_user_attr("base", {k: v for k, v in study.user_attrs["base"].items()
                                 if k != "precision"})  # as written before the field existed
    assert open_study(tmp_path, None, "s", space, base).user_attrs == study.user_attrs
    with pytest.raises(UserError, match="another search space or base config"):
        open_study(tmp_path, None, "s", space, build_config({"dataset": "toys",
                                                             "precision": "bfloat16"}))
    with pytest.raises(UserError, match="another search space or base config"):
        open_study(tmp_path, None, "s", space, build_config({"dataset": "toys", "tau": 0.2}))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell here, tune's optimize
def test_trials_are_pruned_from_half_their_epochs_on(tmp_path):
    """A trial behind the others early (a lower learning rate starts slower) runs on until half
    of its epochs; behind them there, it is stopped."""
    study = open_study(tmp_path, None, "s", [parse_param("dropout=0.1:0.6")],
                       build_config({"dataset": "toys", "epochs": 20}))
    for _ in range(4):
        trial = study.ask()
        for epoch in range(1, 21):
            trial.report(0.5, epoch)
        study.tell(trial, 0.5)
    slow = study.ask()
    for epoch in range(1, 10):
        slow.report(0.1, epoch)
        assert not slow.should_prune(), epoch
    slow.report(0.1, 10)
    assert slow.should_prune()
