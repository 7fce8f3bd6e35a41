"""``mqsa-jax tune``: a hyperparameter search over the config, with Optuna.

A study lives in a database (SQLite in the study directory by default, or any URL Optuna takes,
for machines that share one study) and outlives every process that works on it: any number of
``tune`` processes, started and stopped at any time, take its next trials.  Each trial is an
ordinary run directory under ``trials/`` (config, metrics, results, checkpoints, TensorBoard),
trained in this process; its objective is the run's best validation ``selection_metric``, never
a test figure, and Optuna's median pruner stops a trial whose validation curve falls behind the
others' at the same epoch.

A trial whose process stopped (SIGTERM, SIGKILL, Ctrl-C, a lost machine) is taken up again by
the next ``tune`` of the study, with the same parameters and the same run directory, so it
resumes from its checkpoint: on this machine at once, from another once its heartbeat is
stale.  Interrupted trials end as failed in the database and are not counted; each run directory
counts once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

import optuna

from mqsa_jax.checkpoint import has_checkpoint
from mqsa_jax.config import Config, build_config
from mqsa_jax.errors import UserError
from mqsa_jax.quiet import logger_level
from mqsa_jax.rundir import RunDir, cpu_model
from mqsa_jax.search_space import Param
from mqsa_jax.train import train
from mqsa_jax.tune_report import COUNTED, write_summary

# A trial's process records a heartbeat this often; one silent for the grace period is taken
# to be stopped (the way another machine's stopped trial is found).
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
MAX_ATTEMPTS = 3  # of one trial's run: a run that fails this often is left as failed


def open_study(study_dir: Path, storage: str | None, name: str, space: list[Param],
               base: Config) -> optuna.Study:
    """The study ``name``: created on first use, with the base config's values as its first
    trial; one created with another space or base config is refused."""
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    try:
        with _stable():
            rdb = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                             grace_period=GRACE_SECONDS)
    except Exception as e:  # an unreachable or malformed database URL is the user's to fix
        raise UserError(f"--storage {url}: cannot open ({type(e).__name__}: {e})") from None
    with logger_level("optuna", logging.WARNING):  # its INFO line on a new study; ours follow
        # TPE with the constant liar: a trial another process is running counts as a poor
        # result, so processes sharing the study do not all sample beside the same best.
        study = optuna.create_study(storage=rdb, study_name=name, direction="maximize",
                                    load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(constant_liar=True),
                                    pruner=pruner(base.train.epochs))
    record = {"space": [p.spec() for p in space], "base": base.flat()}
    if not study.user_attrs:
        for key, value in record.items():
            study.set_user_attr(key, value)
        # The base config is the first trial, where the space holds it: the search then
        # never reports a best below the config it started from.
        values = base.flat()
        if all(p.holds(values[p.name]) for p in space):
            study.enqueue_trial({p.name: values[p.name] for p in space})
    elif not _same_study(study.user_attrs, json.loads(json.dumps(record))):
        raise UserError(f"study {name!r} in {url} was started with another search space or "
                        "base config; give another --study-name or --study-dir")
    return study


def pruner(epochs: int) -> optuna.pruners.BasePruner:
    """The median pruner, from half of a trial's ``epochs`` on.  Pruned from epoch 2, the yelp
    SASRec search stopped 8 of its first 13 trials there, every one with a learning rate below
    1e-3, though the best trial so far had 5e-4: a slower start is not a worse end."""
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(2, epochs // 2))


def _same_study(stored: dict, current: dict) -> bool:
    """Whether a study's recorded space and base config are this one's.  A config field added
    to mqsa-jax after the study started (absent from its record) matches while it holds its
    default: that is the value the study's trials ran with."""
    defaults = json.loads(json.dumps(Config().flat()))
    base = {k: v for k, v in current["base"].items()
            if k in stored.get("base", {}) or v != defaults.get(k)}
    return stored.get("space") == current["space"] and stored.get("base") == base


@contextlib.contextmanager
def _stable():
    """Optuna calls heartbeats experimental and warns at each use; they are the documented way to
    find a stopped trial, and a user of tune has nothing to act on in the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_up_stopped(study: optuna.Study) -> list[str]:
    """Marks this machine's trials whose process is gone (and other machines' whose heartbeat
    is stale) failed, and queues each unfinished run again with its parameters; returns the
    runs queued."""
    with _stable():
        optuna.storages.fail_stale_trials(study)
    storage = study._storage  # noqa: SLF001 - Optuna exposes a trial's state change there alone
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _alive(attrs.get("pid", 0)):
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # noqa: SLF001
    by_run: dict[str, list] = {}
    for trial in study.get_trials(deepcopy=False):
        by_run.setdefault(trial.user_attrs.get("run", ""), []).append(trial)
    queued = []
    for run, trials in by_run.items():
        if run and all(t.state == optuna.trial.TrialState.FAIL for t in trials) and (
                len(trials) < MAX_ATTEMPTS):
            study.enqueue_trial(trials[-1].params, user_attrs={"run": run})
            queued.append(run)
    return queued


def _objective(study_dir: Path, base: Config, space: list[Param], data_dir: Path | None):
    def objective(trial: optuna.Trial) -> float:
        values = {p.name: p.suggest(trial) for p in space}
        config = build_config(base.flat(), values)
        run = trial.user_attrs.get("run") or f"{trial.number:04d}"
        for key, value in (("run", run), ("host", socket.gethostname()), ("pid", os.getpid()),
                           ("machine", f"{cpu_model()} x{os.cpu_count()}")):
            trial.set_user_attr(key, value)
        run_dir = study_dir / "trials" / run
        resume = has_checkpoint(run_dir)
        if RunDir(run_dir).holds_run() and not resume:
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
        print(f"trial {trial.number} ({run_dir}): "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in values.items()), file=sys.stderr, flush=True)

        started = time.process_time()

        def report(record: dict) -> None:
            # The search's budget: CPU time does not count the hours a paused or shared process
            # waited, as wall time does; updated per epoch, so a stopped trial keeps most of it.
            trial.set_user_attr("cpu_seconds", round(time.process_time() - started, 1))
            trial.report(record["valid"][base.eval.selection_metric], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        results = train(config, run_dir, data_dir, progress=False, resume=resume,
                        on_evaluation=report)
        trial.set_user_attr("best_epoch", results["best_epoch"])
        return results["valid"][base.eval.selection_metric]

    return objective


def tune(base: Config, space: list[Param], trials: int, study_dir: Path,
         storage: str | None = None, study_name: str = "mqsa-jax",
         data_dir: Path | None = None) -> dict:
    """Runs trials of the study until it holds ``trials`` finished ones (complete or pruned);
    returns its summary.  With several processes on one study, each starts no trial once those
    finished and those the others are running make ``trials``: a study of N has N trials, as
    one process would run (so that studies compared have the same budget).

    Args:
      base: the config every trial starts from.
      space: the searched fields (:func:`mqsa_jax.search_space.search_space`).
      trials: the study's size.
      study_dir: its trials' run directories, its summary and best config, and (without
        ``storage``) its database.
      storage: a database URL several machines may share, instead of the study directory's.
      study_name: the study's name in the database.
      data_dir: the user data directory.
    """
    study = open_study(study_dir, storage, study_name, space, base)
    for run in take_up_stopped(study):
        print(f"taking up trial run {run}, stopped before it finished", file=sys.stderr)

    def taken() -> int:  # this process's own trial, once told, is no longer running
        return len(study.get_trials(
            deepcopy=False, states=(*COUNTED, optuna.trial.TrialState.RUNNING)))

    def after_trial(_study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        write_summary(study, study_dir, base)
        if taken() >= trials:
            study.stop()

    if taken() < trials:
        with logger_level("optuna", logging.WARNING):  # our own line per trial, not its INFO
            study.optimize(_objective(study_dir, base, space, data_dir),
                           callbacks=[after_trial], gc_after_trial=True)
    return write_summary(study, study_dir, base)
