"""Reproduces the paper: the main comparison, the ablations, the sweeps, their tables and plots.

    python experiments/reproduce.py main [--datasets beauty toys] [--seeds 2023 2024 2025]
    python experiments/reproduce.py ablation [--datasets beauty] [--seeds 2023]
    python experiments/reproduce.py sweep L|alpha|lambda_kd|tau [--datasets beauty] [--seeds 2023]
    python experiments/reproduce.py summary

(`make reproduce`, `make ablation` and `make sweep PARAM=L` wrap the first three.)

Every run is one `mqsa-jax train`, in its own run directory under the results folder:
``<dataset>/<variant>/seed<seed>/`` or ``<dataset>/sweep_<param>/<value>/seed<seed>/``.  A
finished run (it has results.json) is skipped and a started one is resumed from its latest
checkpoint, so an interrupted reproduction continues where it stopped; a sweep point equal to
the reference configuration reuses the ``mqsa_ted`` run.  Each run directory also gets
``provenance.json``: the command and, per (re)start, the machine.  After every run, and with
``summary``, the summary is rewritten from whatever runs exist, finished or not:
``summary.json``, ``summary.md``, ``sweeps.json`` and the PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mqsa_jax.config import build_config, load_config_file, parse_overrides
from mqsa_jax.io import atomic_output, read_json_lines, write_json_atomic, write_text_atomic

from measure import machine  # experiments/measure.py

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
DEFAULT_RESULTS = HERE / "results"
PAPER = json.loads((HERE / "reference" / "paper_results.json").read_text())
SELECTION = "NDCG@20"  # the reference's model selection metric (valid) and the ordering's
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")

# Variant name -> config file in experiments/configs, and how tables name it.
VARIANTS = {"sasrec": "SASRec", "sasrec_ted": "SASRec + TED", "mqsa": "MQSA (no TED)",
            "mqsa_ted": "MQSA-TED"}
MAIN_VARIANTS = ("mqsa_ted", "sasrec", "mqsa")  # mqsa: for the SASRec < MQSA < MQSA-TED check
ABLATION_VARIANTS = ("sasrec", "mqsa", "sasrec_ted", "mqsa_ted")
ORDERING = ("sasrec", "mqsa", "mqsa_ted")
# What the README's table reports on, started or not, so that it names what is still to run:
# dataset -> variant -> seeds.  The comparison on beauty over three seeds and on toys is the
# minimum of the reproduction, with the SASRec + TED ablation; sports and yelp when time allows.
PLANNED = {"beauty": {**dict.fromkeys(MAIN_VARIANTS, (2023, 2024, 2025)), "sasrec_ted": (2023,)},
           "toys": dict.fromkeys(ABLATION_VARIANTS, (2023,)),
           "sports": dict.fromkeys(MAIN_VARIANTS, (2023,)),
           "yelp": dict.fromkeys(MAIN_VARIANTS, (2023,))}
PLANNED_SWEEPS = {"beauty": (2023,)}  # dataset -> seeds, for every parameter of SWEEPS


def _window(value: float) -> dict:
    return {"windows": f"1,{value:g}"}


def _alpha(value: float) -> dict:
    return {"window_weights": f"{value:g},{round(1 - value, 6):g}"}


# The ranges of the paper's sensitivity study (L 2-4, alpha about 0.5, lambda_kd about 0.1 and
# tau 0.05-0.1 best), widened on both sides so that the optimum is inside the range.
SWEEPS = {
    "L": ((1, 2, 3, 4, 5), _window),
    "alpha": ((0.1, 0.3, 0.5, 0.7, 0.9), _alpha),
    "lambda_kd": ((0.01, 0.05, 0.1, 0.5, 1.0), lambda v: {"lambda_kd": f"{v:g}"}),
    "tau": ((0.01, 0.05, 0.1, 0.5, 1.0), lambda v: {"tau": f"{v:g}"}),
}


@dataclasses.dataclass(frozen=True)
class Run:
    dataset: str
    variant: str  # a config file of experiments/configs
    seed: int
    run_dir: Path
    overrides: tuple[tuple[str, str], ...] = ()

    def config(self, extra: dict):
        values = load_config_file(CONFIGS / f"{self.variant}.py", self.dataset)
        return build_config(values, {**dict(self.overrides), "seed": str(self.seed), **extra})

    def command(self, extra: dict) -> list[str]:
        sets = [f"{k}={v}" for k, v in {**dict(self.overrides), "seed": self.seed,
                                         **extra}.items()]
        started = (self.run_dir / "config.json").exists()
        return (["mqsa-jax", "train", "--config", f"{_relative(CONFIGS)}/{self.variant}.py:"
                 f"{self.dataset}", "--no-progress"]
                + [a for s in sets for a in ("--set", s)]
                + (["--resume", _relative(self.run_dir)] if started else
                   ["--run-dir", _relative(self.run_dir)]))


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def variant_runs(variants, datasets, seeds, results: Path) -> list[Run]:
    # Seeds outermost: every dataset gets a first seed of every variant before any second seed.
    return [Run(d, v, s, results / d / v / f"seed{s}")
            for s in seeds for d in datasets for v in variants]


def sweep_folder(results: Path, dataset: str, param: str, value: float) -> Path:
    """Where a sweep point's seeds live: the reference point is the ``mqsa_ted`` run itself."""
    overrides = tuple(SWEEPS[param][1](value).items())
    reference = Run(dataset, "mqsa_ted", 0, Path()).config({})
    if Run(dataset, "mqsa_ted", 0, Path(), overrides).config({}) == reference:
        return results / dataset / "mqsa_ted"
    return results / dataset / f"sweep_{param}" / f"{value:g}"


def sweep_runs(param: str, datasets, seeds, results: Path) -> list[Run]:
    values, overrides_of = SWEEPS[param]
    return [Run(d, "mqsa_ted", s, sweep_folder(results, d, param, v) / f"seed{s}",
                tuple(overrides_of(v).items()))
            for d in datasets for v in values for s in seeds]


def _record_start(run: Run, command: list[str]) -> None:
    path = run.run_dir / "provenance.json"
    record = json.loads(path.read_text()) if path.exists() else {"sessions": []}
    record["command"] = shlex.join(command[:-2] + ["--run-dir", command[-1]])
    # Wall times are only comparable on an unshared machine: say how busy it was at each start.
    record["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **machine(),
                               "load_average_1min": round(os.getloadavg()[0], 2),
                               "nice": os.nice(0)})
    write_json_atomic(path, record)  # creates the run directory


def execute(runs: list[Run], extra: dict, results: Path) -> int:
    """Runs (or resumes) each unfinished run in turn; returns the number that failed."""
    failed = 0
    for i, run in enumerate(runs, 1):
        status = run_status(run.run_dir)
        # Finished, for the epochs asked now (a run stopped early resumes and stops at once).
        if status["complete"] and status["epochs_done"] >= run.config(extra).epochs:
            print(f"[{i}/{len(runs)}] done already: {run.run_dir}", flush=True)
            continue
        command = run.command(extra)
        print(f"[{i}/{len(runs)}] {shlex.join(command)}", flush=True)
        _record_start(run, command)
        code = subprocess.call([sys.executable, "-m", "mqsa_jax.cli", *command[1:]])
        if code == 130 or code < 0:
            raise KeyboardInterrupt
        if code:
            failed += 1
            print(f"[{i}/{len(runs)}] failed (exit {code}): {run.run_dir}", flush=True)
        write_summary(results)
    return failed


def run_status(run_dir: Path) -> dict:
    """What a run directory holds: its config, history, and best record so far."""
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    metrics = run_dir / "metrics.jsonl"
    # A run training beside this process may be appending its last line.
    history = read_json_lines(metrics) if metrics.exists() else []
    evaluated = [r for r in history if "valid" in r]
    best = None
    for record in evaluated:  # the first best, as the reference selects
        if best is None or record["valid"][SELECTION] > best["valid"][SELECTION]:
            best = record
    done = history[-1]["epoch"] if history else 0
    finished = (run_dir / "results.json").exists() and config is not None and (
        done == config["epochs"] or config["patience"] > 0)
    return {"config": config, "history": history, "best": best, "epochs_done": done,
            "complete": finished,
            "seconds": round(sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0)
                                 for r in history), 1)}


def _recent_pace(history: list[dict], epochs: int = 10) -> float | None:
    """Median seconds per epoch over the last few: the machine's load now, not at the start."""
    seconds = [r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in history[-epochs:]]
    return float(np.median(seconds)) if seconds else None


def _mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _group(run_dirs: list[Path]) -> dict:
    """Mean and sample std over the finished seeds; the unfinished ones listed as pending."""
    statuses = {int(p.name.removeprefix("seed")): run_status(p) for p in sorted(run_dirs)}
    done = {s: st for s, st in statuses.items() if st["complete"]}

    def over_seeds(figure) -> dict:
        """Each metric's mean and std of ``figure(status, metric)`` over the finished seeds."""
        return {m: _mean_std([figure(st, m) for st in done.values()])
                for m in METRICS} if done else {}

    group = {"seeds": sorted(done),
             "valid": over_seeds(lambda st, m: st["best"]["valid"][m]),
             "test": over_seeds(lambda st, m: st["best"]["test"][m]),
             # Not the protocol: what a report that chose each metric's epoch by test would show.
             "test_max_over_epochs": over_seeds(
                 lambda st, m: max(r["test"][m] for r in st["history"] if "test" in r))}
    group["best_epoch"] = {str(s): st["best"]["epoch"] for s, st in done.items()}
    group["test_by_seed"] = {str(s): st["best"]["test"] for s, st in done.items()}
    group["train_eval_seconds"] = {str(s): st["seconds"] for s, st in done.items()}
    machines = set()
    for p in run_dirs:
        provenance = p / "provenance.json"
        if provenance.exists():
            for session in json.loads(provenance.read_text())["sessions"]:
                machines.add(f"{session['cpu']} x{session['cpu_count']}"
                             + (f", {session['gpus']}" if "gpus" in session else ""))
    group["machines"] = sorted(machines)
    group["pending"] = {
        str(s): {"epochs_done": st["epochs_done"],
                 "epochs": st["config"]["epochs"] if st["config"] else None,
                 "seconds_so_far": st["seconds"],
                 "seconds_per_epoch_recent": _recent_pace(st["history"]),
                 "best_so_far": ({"epoch": st["best"]["epoch"],
                                  "valid": {SELECTION: st["best"]["valid"][SELECTION]},
                                  "test": st["best"]["test"]} if st["best"] else None)}
        for s, st in statuses.items() if not st["complete"]}
    return group


def _seed_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.glob("seed*") if (p / "config.json").exists()]


def collect(results: Path) -> tuple[dict, dict]:
    """The summary of the variants and of the sweeps, from the run directories."""
    summary, sweeps = {}, {}
    for dataset_dir in sorted(p for p in results.iterdir() if p.is_dir()):
        dataset = dataset_dir.name
        for variant in VARIANTS:
            if runs := _seed_dirs(dataset_dir / variant):
                summary.setdefault(dataset, {})[variant] = _group(runs)
        for param, (values, _) in SWEEPS.items():
            if not (dataset_dir / f"sweep_{param}").is_dir():
                continue
            points = {f"{v:g}": _group(runs) for v in values
                      if (runs := _seed_dirs(sweep_folder(results, dataset, param, v)))}
            sweeps.setdefault(dataset, {})[param] = points
    return summary, sweeps


def _cell(stat: dict | None) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat["std"] is not None else "")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _seeds(seeds: list[str]) -> str:
    """'seed 1' or 'seeds 1, 2'."""
    return ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(seeds)


def _common_seeds(by_seed: list[dict]) -> list[str]:
    """The seeds that every one of these variants finished, in order."""
    return sorted(set.intersection(*(set(seeds) for seeds in by_seed)), key=int)


def _relative_gap(ours: float, paper: float) -> str:
    return f"{100 * (ours - paper) / paper:+.1f}%"


def _ordering_line(groups: dict) -> str | None:
    scores = {v: groups[v]["test"][SELECTION]["mean"] for v in ORDERING
              if v in groups and groups[v]["seeds"]}
    if len(scores) < len(ORDERING):
        return None
    values = ", ".join(f"{VARIANTS[v]} {scores[v]:.4f}" for v in ORDERING)
    broken = [f"{VARIANTS[a]} is above {VARIANTS[b]} by {_relative_gap(scores[a], scores[b])}"
              for a, b in zip(ORDERING, ORDERING[1:]) if scores[a] >= scores[b]]
    chain = " < ".join(VARIANTS[v] for v in ORDERING)
    line = (f"Test {SELECTION}: {values}. The ordering {chain} "
            + ("holds." if not broken else f"does not hold: {'; '.join(broken)}."))
    # The means may average different seeds; the seeds every variant finished compare like with
    # like.
    by_seed = [groups[v]["test_by_seed"] for v in ORDERING]
    if not (common := _common_seeds(by_seed)):
        return line
    chains, failing = [], []
    for seed in common:
        scores = [seeds[seed][SELECTION] for seeds in by_seed]
        chain = f"{scores[0]:.4f}"
        for a, b in zip(scores, scores[1:]):
            chain += f" {'<' if a < b else '≥'} {b:.4f}"
        chains.append(f"{seed}: {chain}")
        if any(a >= b for a, b in zip(scores, scores[1:])):
            failing.append(seed)
    verdict = "it holds on each" if not failing else f"it does not hold on {_seeds(failing)}"
    return line + f" Per seed finished by all: {'; '.join(chains)} ({verdict})."


def _gain_line(groups: dict, dataset: str) -> str | None:
    """MQSA-TED's relative gain over SASRec here, beside the paper's over its best baseline."""
    ours, base = (groups.get(v, {}).get("test_by_seed", {}) for v in ("mqsa_ted", "sasrec"))
    if not (common := _common_seeds([ours, base])):
        return None
    paper = PAPER["relative_gain_over_best_baseline"].get(dataset, {})

    def mean(by_seed: dict, metric: str) -> float:
        return float(np.mean([by_seed[seed][metric] for seed in common]))

    line = (f"MQSA-TED over SASRec (relative, on {_seeds(common)}, which both finished): "
            + ", ".join(f"{m} {_relative_gap(mean(ours, m), mean(base, m))}"
                        for m in ("HR@5", "NDCG@5", SELECTION)))
    if paper:
        line += ("; the paper's gain over its best baseline (not necessarily SASRec): "
                 + ", ".join(f"{m} {100 * g:+.1f}%" for m, g in paper.items()))
    return line + "."


def _pending_lines(groups: dict) -> list[str]:
    lines = []
    for variant, group in groups.items():
        for seed, p in group["pending"].items():
            line = f"- {VARIANTS[variant]}, seed {seed}: epoch {p['epochs_done']} of {p['epochs']}"
            if p["epochs_done"] and p["epochs"]:
                left = (p["epochs"] - p["epochs_done"]) * p["seconds_per_epoch_recent"]
                line += f", about {_duration(left)} more at the pace of its last epochs"
            if p["best_so_far"]:
                b = p["best_so_far"]
                line += (f" (best so far: epoch {b['epoch']}, valid {SELECTION} "
                         f"{b['valid'][SELECTION]:.4f}, test HR@5 {b['test']['HR@5']:.4f}, "
                         f"NDCG@5 {b['test']['NDCG@5']:.4f}, {SELECTION} "
                         f"{b['test'][SELECTION]:.4f})")
            lines.append(line)
    return lines


def markdown(summary: dict, sweeps: dict) -> str:
    out = ["# Reproduction results", "",
           "Written by `python experiments/reproduce.py` from the run directories beside this "
           "file (do not edit). Test metrics at each run's first epoch with the best validation "
           f"{SELECTION} (the reference's protocol: full ranking of all items, history masked); "
           "mean ± sample standard deviation over the finished seeds. Paper figures: "
           f"`experiments/reference/paper_results.json` ({PAPER['source']}). Times are wall "
           "times on a machine that other jobs may have shared (each run's `provenance.json` "
           "has the load average and nice level at each start), so the table gives the fastest "
           "seed's.", ""]
    header = ("| model | seeds | " + " | ".join(METRICS)
              + " | best epoch | train + eval time, fastest seed |")
    for dataset, groups in summary.items():
        out += [f"## {dataset}", "", header, "|" + "---|" * (len(METRICS) + 4)]
        for variant in VARIANTS:
            if variant not in groups:
                continue
            g = groups[variant]
            seeds = ", ".join(map(str, g["seeds"])) or "pending"
            epochs = ", ".join(map(str, g["best_epoch"].values())) or "–"
            seconds = list(g["train_eval_seconds"].values())
            time_cell = _duration(min(seconds)) if seconds else "–"
            cells = [_cell(g["test"].get(m)) for m in METRICS]
            out.append(f"| {VARIANTS[variant]} | {seeds} | " + " | ".join(cells)
                       + f" | {epochs} | {time_cell} |")
        paper = PAPER["mqsa_ted"].get(dataset)
        if paper:
            cells = [f"{paper[m]:.4f}" if m in paper else "–" for m in METRICS]
            out.append("| MQSA-TED, paper | – | " + " | ".join(cells) + " | – | – |")
        out.append("")
        ours = groups.get("mqsa_ted")
        if paper and ours and ours["seeds"]:
            gaps = ", ".join(f"{m} {_relative_gap(ours['test'][m]['mean'], paper[m])}"
                             for m in paper)
            upper = ours["test_max_over_epochs"]
            ceiling = ", ".join(
                f"{m} {_cell(upper[m])} ({_relative_gap(upper[m]['mean'], paper[m])})"
                for m in paper)
            out += [f"MQSA-TED against the paper (relative): {gaps}.", "",
                    "Not the protocol, for comparison only: each seed's best test figure over all "
                    "its epochs (the epoch chosen by test, for each metric on its own), mean over "
                    f"the seeds, and its gap to the paper: {ceiling}.", ""]
        if line := _ordering_line(groups):
            out += [line, ""]
        if line := _gain_line(groups, dataset):
            out += [line, ""]
        if pending := _pending_lines(groups):
            out += ["Pending (not in the means above):", *pending, ""]
        machines = sorted({m for g in groups.values() for m in g["machines"]})
        if machines:
            out += ["Machines: " + "; ".join(machines) + ".", ""]
    for dataset, params in sweeps.items():
        for param, points in params.items():
            out += [f"## Sweep of {param} on {dataset} (MQSA-TED, others at the reference)", "",
                    f"| {param} | seeds | valid {SELECTION} | test HR@5 | test NDCG@5 | "
                    f"test {SELECTION} |", "|---|---|---|---|---|---|"]
            for value, g in points.items():
                seeds = ", ".join(map(str, g["seeds"])) or "pending"
                out.append(f"| {value} | {seeds} | {_cell(g['valid'].get(SELECTION))} | "
                           f"{_cell(g['test'].get('HR@5'))} | {_cell(g['test'].get('NDCG@5'))} | "
                           f"{_cell(g['test'].get(SELECTION))} |")
            out.append("")
    return "\n".join(out)


def _mean_curve(run_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Validation NDCG@20 per epoch, averaged over the seeds that reached each epoch."""
    per_epoch: dict[int, list[float]] = {}
    for run_dir in run_dirs:
        for record in run_status(run_dir)["history"]:
            if "valid" in record:
                per_epoch.setdefault(record["epoch"], []).append(record["valid"][SELECTION])
    epochs = np.array(sorted(per_epoch))
    return epochs, np.array([np.mean(per_epoch[e]) for e in epochs])


def plot(summary: dict, sweeps: dict, results: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    folder = results / "plots"
    folder.mkdir(exist_ok=True)
    written = []
    for dataset, groups in summary.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, group in groups.items():
            # The mean over the finished seeds, so that a run in progress does not bend it; each
            # unfinished seed dashed beside it, in the same colour.
            finished = [results / dataset / variant / f"seed{s}" for s in group["seeds"]]
            color = None
            if finished:
                seeds = f"{len(finished)} seed" + ("s" if len(finished) > 1 else "")
                color = ax.plot(*_mean_curve(finished),
                                label=f"{VARIANTS[variant]} ({seeds})")[0].get_color()
            for seed in group["pending"]:
                epochs, curve = _mean_curve([results / dataset / variant / f"seed{seed}"])
                if len(epochs):
                    color = ax.plot(epochs, curve, "--", color=color, linewidth=1,
                                    label=f"{VARIANTS[variant]} (seed {seed}, unfinished)"
                                    )[0].get_color()
        # The variants differ by a few percent after the first epochs' climb: zoom in on that.
        later = [y for line in ax.get_lines() for x, y in zip(*line.get_data()) if x >= 10]
        if later:
            ax.set_ylim(bottom=0.95 * min(later))
        ax.set(xlabel="epoch", ylabel=f"validation {SELECTION}", title=dataset)
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, folder / f"{dataset}_valid_ndcg20.png"))
    for dataset, params in sweeps.items():
        for param, points in params.items():
            done = {float(v): g for v, g in points.items() if g["seeds"]}
            if not done:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.5))
            values = sorted(done)
            for split in ("valid", "test"):
                means = [done[v][split][SELECTION]["mean"] for v in values]
                stds = [done[v][split][SELECTION]["std"] or 0 for v in values]
                ax.errorbar(values, means, yerr=stds, marker="o", capsize=3, label=split)
            if param in ("lambda_kd", "tau"):
                ax.set_xscale("log")
            ax.set(xlabel=param, ylabel=SELECTION, title=f"{dataset}: MQSA-TED, {param}")
            ax.grid(alpha=0.3)
            ax.legend()
            written.append(_save(fig, folder / f"{dataset}_sweep_{param}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def _sweep_progress(results: Path, dataset: str, seeds) -> dict[str, tuple[int, int]]:
    """Per swept parameter: how many of its runs (values x seeds) are finished, of how many."""
    return {param: (sum(run_status(sweep_folder(results, dataset, param, v) / f"seed{s}")
                        ["complete"] for v in values for s in seeds), len(values) * len(seeds))
            for param, (values, _) in SWEEPS.items()}


def readme_table(summary: dict, results: Path, planned: dict = PLANNED,
                 planned_sweeps: dict = PLANNED_SWEEPS) -> str:
    """The README's results table: test metrics of what was run, and what is pending, started
    or not, among the ``planned`` runs; then how far the planned sweeps are."""
    lines = ["| dataset | model | seeds done | HR@5 | NDCG@5 | NDCG@20 | pending |",
             "|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys([*planned, *summary]):
        groups = summary.get(dataset, {})
        planned_seeds = planned.get(dataset, {})
        for variant in VARIANTS:
            if variant not in groups and variant not in planned_seeds:
                continue
            seeds = planned_seeds.get(variant, ())
            g = groups.get(variant, {"seeds": [], "test": {}, "pending": {}})
            pending = [f"seed {s}: epoch {p['epochs_done']}/{p['epochs']}"
                       for s, p in g["pending"].items()]
            if waiting := [s for s in seeds if s not in g["seeds"] and str(s) not in g["pending"]]:
                pending.append(f"{_seeds(list(map(str, waiting)))}: not started")
            cells = [_cell(g["test"].get(m)) for m in ("HR@5", "NDCG@5", "NDCG@20")]
            lines.append(f"| {dataset} | {VARIANTS[variant]} | "
                         f"{', '.join(map(str, g['seeds'])) or '–'} | " + " | ".join(cells)
                         + f" | {', '.join(pending) or '–'} |")
        if paper := PAPER["mqsa_ted"].get(dataset):
            cells = [f"{paper[m]:.4f}" if m in paper else "–" for m in ("HR@5", "NDCG@5",
                                                                        "NDCG@20")]
            lines.append(f"| {dataset} | MQSA-TED, paper | – | " + " | ".join(cells) + " | – |")
    for dataset, seeds in planned_sweeps.items():
        progress = ", ".join(f"{param} {finished}/{total}" for param, (finished, total)
                             in _sweep_progress(results, dataset, seeds).items())
        lines += ["", f"Sweeps on {dataset} (MQSA-TED, seed{'s' * (len(seeds) > 1)} "
                      f"{', '.join(map(str, seeds))}), runs finished: {progress}."]
    return "\n".join(lines)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def _update_readme(readme: Path, table: str) -> None:
    """Rewrites the README's block between the results markers, if it has them."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    write_text_atomic(readme, head + README_START + "\n" + table + "\n" + README_END
                      + rest.split(README_END, 1)[1])


def write_summary(results: Path) -> None:
    summary, sweeps = collect(results)
    write_json_atomic(results / "summary.json", summary)
    write_text_atomic(results / "summary.md", markdown(summary, sweeps))
    if sweeps:
        write_json_atomic(results / "sweeps.json", sweeps)
    plot(summary, sweeps, results)
    if results.resolve() == DEFAULT_RESULTS:  # the project's own results: the README's table
        _update_readme(HERE.parent / "README.md", readme_table(summary, results))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                      help="results folder (default: experiments/results)")
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    common.add_argument("--datasets", nargs="+", default=["beauty"])
    common.add_argument("--seeds", nargs="+", type=int, default=[2023])
    common.add_argument("--epochs", type=int, help="override the reference's 200 epochs")
    common.add_argument("--patience", type=int,
                        help="stop a run after this many evaluations without a better "
                             f"valid {SELECTION} (default: never, as the reference)")
    for name, variants in (("main", MAIN_VARIANTS), ("ablation", ABLATION_VARIANTS)):
        sub.add_parser(name, parents=[common]).add_argument(
            "--variants", nargs="+", choices=list(VARIANTS), default=list(variants),
            help=f"default: {' '.join(variants)}")
    sweep = sub.add_parser("sweep", parents=[common])
    sweep.add_argument("param", choices=sorted(SWEEPS))
    sub.add_parser("summary", parents=[base])
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.command == "summary":
        write_summary(args.results)
        print(f"wrote {args.results / 'summary.md'}")
        return 0
    extra = parse_overrides([f"{k}={v}" for k, v in
                             (("epochs", args.epochs), ("patience", args.patience))
                             if v is not None])
    if args.command == "sweep":
        runs = sweep_runs(args.param, args.datasets, args.seeds, args.results)
    else:
        runs = variant_runs(args.variants, args.datasets, args.seeds, args.results)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
    try:
        failed = execute(runs, extra, args.results)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    write_summary(args.results)
    print(f"wrote {args.results / 'summary.md'}" + (f"; {failed} run(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
