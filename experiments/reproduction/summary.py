"""The reproduction's numbers, collected from the run directories.

A finished run's best epoch and its metrics are its results, as training wrote them; its
metrics records give the curves, the times and, for a run still going, its best so far.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.reproduction.plan import (
    METRICS,
    SWEEPS,
    VARIANTS,
    sweep_folder,
    variant_folder,
)
from mqsa_jax.checkpoint import has_checkpoint
from mqsa_jax.config import read_run_config
from mqsa_jax.evaluation import SELECTION_METRIC
from mqsa_jax.rundir import RunDir


def best_record(history: list[dict]) -> dict | None:
    """The first epoch with the best valid selection metric, as training selects it."""
    best = None
    for record in (r for r in history if "valid" in r):
        if best is None or record["valid"][SELECTION_METRIC] > best["valid"][SELECTION_METRIC]:
            best = record
    return best


def run_status(run_dir: Path) -> dict:
    """What a run directory holds: its config, history, and best record so far."""
    run = RunDir(run_dir)
    config = read_run_config(run_dir) if run.holds_run() else None
    # A run training beside this process may be appending its last line.
    history = run.metrics() if run.metrics_file.exists() else []
    done = history[-1]["epoch"] if history else 0
    finished = run.results_file.exists() and config is not None and (
        done == config.train.epochs or config.eval.patience > 0)
    if finished:
        written = run.results()
        best = {"epoch": written["best_epoch"], "valid": written["valid"],
                "test": written["test"]}
    else:
        best = best_record(history)
    return {"config": config, "history": history, "best": best, "epochs_done": done,
            "complete": finished,
            "seconds": round(sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0)
                                 for r in history), 1)}


def recent_pace(history: list[dict], epochs: int = 10) -> float | None:
    """Median seconds per epoch over the last few: the machine's load now, not at the start."""
    seconds = [r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in history[-epochs:]]
    return float(np.median(seconds)) if seconds else None


def _mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _machines(run_dirs: list[Path]) -> list[str]:
    machines = set()
    for p in run_dirs:
        provenance = RunDir(p).provenance_file
        if provenance.exists():
            for session in json.loads(provenance.read_text())["sessions"]:
                machines.add(f"{session['cpu']} x{session['cpu_count']}"
                             + (f", {session['gpus']}" if "gpus" in session else ""))
    return sorted(machines)


def group(run_dirs: list[Path]) -> dict:
    """Mean and sample std over the finished seeds; the unfinished ones listed as pending."""
    paths = {int(p.name.removeprefix("seed")): p for p in sorted(run_dirs)}
    statuses = {s: run_status(p) for s, p in paths.items()}
    done = {s: st for s, st in statuses.items() if st["complete"]}

    def over_seeds(figure) -> dict:
        """Each metric's mean and std of ``figure(status, metric)`` over the finished seeds."""
        return {m: _mean_std([figure(st, m) for st in done.values()])
                for m in METRICS} if done else {}

    return {
        "seeds": sorted(done),
        "valid": over_seeds(lambda st, m: st["best"]["valid"][m]),
        "test": over_seeds(lambda st, m: st["best"]["test"][m]),
        # Not the protocol: what a report that chose each metric's epoch by test would show.
        "test_max_over_epochs": over_seeds(
            lambda st, m: max(r["test"][m] for r in st["history"] if "test" in r)),
        "best_epoch": {str(s): st["best"]["epoch"] for s, st in done.items()},
        "valid_by_seed": {str(s): st["best"]["valid"] for s, st in done.items()},
        "test_by_seed": {str(s): st["best"]["test"] for s, st in done.items()},
        "train_eval_seconds": {str(s): st["seconds"] for s, st in done.items()},
        "machines": _machines(run_dirs),
        "pending": {
            str(s): {"epochs_done": st["epochs_done"],
                     "epochs": st["config"].train.epochs if st["config"] else None,
                     "resumable": has_checkpoint(paths[s]),
                     "seconds_so_far": st["seconds"],
                     "seconds_per_epoch_recent": recent_pace(st["history"]),
                     "best_so_far": ({"epoch": st["best"]["epoch"],
                                      "valid": {SELECTION_METRIC:
                                                st["best"]["valid"][SELECTION_METRIC]},
                                      "test": st["best"]["test"]} if st["best"] else None)}
            for s, st in statuses.items() if not st["complete"]},
    }


def common_seeds(by_seed: list[dict]) -> list[str]:
    """The seeds that every one of these groups finished, in order."""
    return sorted(set.intersection(*(set(seeds) for seeds in by_seed)), key=int)


def sweep_scores(points: dict, split: str = "test") -> tuple[list[str], dict[float, float]]:
    """A sweep's finished points compared like with like: the seeds that all of them finished,
    and each point's mean selection metric over those seeds alone.  The reference point reuses
    a variant's run, which may have more seeds than the sweep; its mean over all of them would
    not compare with the other points'.

    Args:
      points: value -> :func:`group` of that sweep point.
      split: "valid" or "test".

    Returns:
      (the common seeds, value -> mean selection metric over them); ([], {}) when no point
      has finished or they share no seed.
    """
    finished = {float(v): g[f"{split}_by_seed"] for v, g in points.items() if g["seeds"]}
    if not finished or not (common := common_seeds(list(finished.values()))):
        return [], {}
    return common, {v: float(np.mean([by_seed[s][SELECTION_METRIC] for s in common]))
                    for v, by_seed in finished.items()}


def seed_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.glob("seed*") if RunDir(p).holds_run()]


def collect(results: Path) -> tuple[dict, dict]:
    """The summary of the variants and of the sweeps, from the run directories."""
    summary, sweeps = {}, {}
    for dataset_dir in sorted(p for p in results.iterdir() if p.is_dir()):
        dataset = dataset_dir.name
        for variant in VARIANTS:
            folder = variant_folder(results, dataset, variant)
            if runs := seed_dirs(folder):
                summary.setdefault(dataset, {})[variant] = group(runs)
                if folder.name != variant:
                    summary[dataset][variant]["runs_of"] = folder.name
        for param, values in SWEEPS.items():
            if not (dataset_dir / f"sweep_{param}").is_dir():
                continue
            points = {f"{v:g}": group(runs) for v in values
                      if (runs := seed_dirs(sweep_folder(results, dataset, param, v)))}
            sweeps.setdefault(dataset, {})[param] = points
    return summary, sweeps


def sweep_progress(results: Path, dataset: str, seeds) -> dict[str, tuple[int, int]]:
    """Per swept parameter: how many of its runs (values x seeds) are finished, of how many."""
    return {param: (sum(run_status(sweep_folder(results, dataset, param, v) / f"seed{s}")
                        ["complete"] for v in values for s in seeds), len(values) * len(seeds))
            for param, values in SWEEPS.items()}
