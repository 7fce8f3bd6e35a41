"""A study's summary (:mod:`mqsa_jax.tune`), rewritten after every trial in its directory::

    summary.json, summary.md   every trial: state, parameters, best validation metric and epoch
    best_config.py             the best trial's config, a file ``train --config`` takes
    plots/                     the metric over trials and against each parameter (matplotlib)
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from mqsa_jax.config import Config
from mqsa_jax.io import write_json_atomic, write_text_atomic

# The trials that make a study's size: a failed one is taken up again, a running one may be.
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def counted(row: dict) -> bool:
    """Whether a row of :func:`trial_rows` is a trial that counts toward the study's size."""
    return row["state"] in {state.name.lower() for state in COUNTED}


def trial_rows(study: optuna.Study) -> list[dict]:
    """One dict per trial of ``study``, failed ones included: its number, state, run,
    parameters, value (the best validation figure), best and last epochs, the epochs it reported
    (a trial resumed from a checkpoint reports the epochs after it), wall and CPU seconds (None
    where not recorded) and machine."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                   if trial.datetime_complete and trial.datetime_start else None)
        rows.append({"number": trial.number, "state": trial.state.name.lower(),
                     "run": trial.user_attrs.get("run"), "params": trial.params,
                     "value": trial.value, "best_epoch": trial.user_attrs.get("best_epoch"),
                     "last_epoch": max(trial.intermediate_values, default=None),
                     "epochs_reported": len(trial.intermediate_values),
                     "seconds": None if seconds is None else round(seconds, 1),
                     "cpu_seconds": trial.user_attrs.get("cpu_seconds"),
                     "machine": trial.user_attrs.get("machine")})
    return rows


def budget(rows: list[dict]) -> dict:
    """What a study has spent, from :func:`trial_rows`: trials counted (complete, pruned) and
    stopped (failed, taken up again or left), epochs trained in all (each epoch once, in the
    attempt that ran it), wall seconds from each trial's start to end (hours a process waited
    paused or shared included), CPU seconds over the trials that recorded them, and the
    machines."""
    states = [r["state"] for r in rows]
    timed = [r["cpu_seconds"] for r in rows if r["cpu_seconds"] is not None]
    return {"complete": states.count("complete"), "pruned": states.count("pruned"),
            "failed": states.count("fail"), "running": states.count("running"),
            "epochs_trained": sum(r["epochs_reported"] for r in rows),
            "wall_seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
            "cpu_seconds": round(sum(timed), 1), "cpu_timed_trials": len(timed),
            "machines": sorted({r["machine"] for r in rows if r["machine"]}),
            "machine_unrecorded_trials": sum(not r["machine"] for r in rows)}


def budget_line(spent: dict) -> str:
    """:func:`budget` in one sentence."""
    line = (f"{spent['complete'] + spent['pruned']} trials counted ({spent['complete']} "
            f"complete, {spent['pruned']} pruned), {spent['failed']} stopped and not counted"
            + (f", {spent['running']} running" if spent["running"] else "")
            + f"; {spent['epochs_trained']} epochs trained; "
            f"{spent['wall_seconds'] / 3600:.1f} h of trial wall time")
    if timed := spent["cpu_timed_trials"]:
        line += (f", {spent['cpu_seconds'] / 3600:.1f} CPU-hours over the "
                 + ("trial that recorded them" if timed == 1 else
                    f"{timed} trials that recorded them"))
    if spent["machines"]:
        line += "; on " + "; ".join(spent["machines"])
    if unrecorded := spent["machine_unrecorded_trials"]:
        line += f"; {unrecorded} trials from before their machine and CPU time were recorded"
    return line + "."


def best_row(rows: list[dict]) -> dict | None:
    """The row of :func:`trial_rows` of the best complete trial (pruned ones stopped before
    their best); None before any completes."""
    complete = [r for r in rows if r["state"] == "complete"]
    return max(complete, key=lambda r: r["value"]) if complete else None


def best_config_text(study: optuna.Study, best: dict, base: Config) -> str:
    """The config file of the trial of row ``best``: the base config with its parameters."""
    values = {**base.flat(), **best["params"]}
    lines = [f'"""The best trial of study {study.study_name!r}: trial {best["number"]} (run '
             f'{best["run"]}), valid {base.eval.selection_metric} '
             f'{best["value"]:.5f}.', "", "    mqsa-jax train --config THIS_FILE", '"""', "", "",
             "def get_config():", "    return {"]
    lines += [f"        {key!r}: {value!r}," for key, value in values.items()]
    return "\n".join(lines + ["    }", ""])


def _markdown(study: optuna.Study, rows: list[dict], spent: dict, metric: str) -> str:
    names = sorted({name for row in rows for name in row["params"]})
    header = ["trial", "run", "state", *names, f"valid {metric}", "best epoch", "epochs run",
              "seconds", "CPU seconds"]
    lines = [f"# Study {study.study_name}", "", f"Objective: the best validation {metric} of "
             "each trial's run (the median pruner stops trials behind the others).", "",
             f"Budget: {budget_line(spent)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        params = [f"{row['params'][n]:.4g}" if isinstance(row["params"].get(n), float)
                  else str(row["params"].get(n, "")) for n in names]
        value = "" if row["value"] is None else f"{row['value']:.5f}"
        lines.append("| " + " | ".join(str(c) for c in [
            row["number"], row["run"] or "", row["state"], *params, value, row["best_epoch"] or "",
            row["last_epoch"] or "", row["seconds"] or "", row["cpu_seconds"] or ""]) + " |")
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict], out: Path, metric: str) -> list[str]:
    """PNGs of the metric over trials and against each parameter; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    done = [r for r in rows if r["value"] is not None]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ["trials", *sorted({n for r in done for n in r["params"]})]:
        figure, axes = plt.subplots(figsize=(5, 3.5))
        xs = [r["number"] if name == "trials" else r["params"].get(name) for r in done]
        axes.scatter(xs, [r["value"] for r in done])
        axes.set_xlabel("trial" if name == "trials" else name)
        axes.set_ylabel(f"valid {metric}")
        figure.tight_layout()
        path = out / f"{'metric_over_trials' if name == 'trials' else 'param_' + name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path.name)
    return written


def write_summary(study: optuna.Study, study_dir: Path, base: Config) -> dict:
    """Writes the study's summary files; returns the summary."""
    metric = base.eval.selection_metric
    rows = trial_rows(study)
    best = best_row(rows)
    summary = {"study": study.study_name, "objective": f"valid {metric}", "trials": rows,
               "budget": budget(rows),
               "best": None if best is None else {key: best[key] for key in
                                                  ("number", "value", "params", "run")}}
    summary["plots"] = _plots(rows, study_dir / "plots", metric)
    write_json_atomic(study_dir / "summary.json", json.loads(json.dumps(summary, default=str)))
    write_text_atomic(study_dir / "summary.md", _markdown(study, rows, summary["budget"], metric))
    if best is not None:
        write_text_atomic(study_dir / "best_config.py", best_config_text(study, best, base))
    return summary
