"""The reproduction's report, ``summary.md``: the variants per dataset, then the sweeps."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from experiments.markdown import duration, mean_std, relative_gap, seed_list, table
from experiments.reproduction.claims import claim_line
from experiments.reproduction.paper import PAPER, paper_verdict_line
from experiments.reproduction.plan import (
    BASELINE,
    METRICS,
    ORDERING,
    TUNED_ORDERING,
    VARIANTS,
)
from experiments.reproduction.plots import figure_path
from experiments.reproduction.searches import search_line
from experiments.reproduction.summary import common_seeds, sweep_scores
from mqsa_jax.evaluation import SELECTION_METRIC as SELECTION
from mqsa_jax.rundir import PROVENANCE


def ordering_line(groups: dict, ordering: tuple[str, ...] = ORDERING) -> str | None:
    """Whether the test means of ``ordering``'s variants rise in that order, overall and per
    seed; None until each has a finished seed."""
    scores = {v: groups[v]["test"][SELECTION]["mean"] for v in ordering
              if v in groups and groups[v]["seeds"]}
    if len(scores) < len(ordering):
        return None
    values = ", ".join(f"{VARIANTS[v]} {scores[v]:.4f}" for v in ordering)
    broken = [f"{VARIANTS[a]} is above {VARIANTS[b]} by {relative_gap(scores[a], scores[b])}"
              for a, b in zip(ordering, ordering[1:]) if scores[a] >= scores[b]]
    chain = " < ".join(VARIANTS[v] for v in ordering)
    line = (f"Test {SELECTION}: {values}. The ordering {chain} "
            + ("holds." if not broken else f"does not hold: {'; '.join(broken)}."))
    # The means may average different seeds; the seeds every variant finished compare like with
    # like.
    by_seed = [groups[v]["test_by_seed"] for v in ordering]
    if not (common := common_seeds(by_seed)):
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
    verdict = "it holds on each" if not failing else f"it does not hold on {seed_list(failing)}"
    return line + f" Per seed finished by all: {'; '.join(chains)} ({verdict})."


def gain_line(groups: dict, dataset: str) -> str | None:
    """MQSA-TED's relative gain over SASRec here, beside the paper's over its best baseline."""
    ours, base = (groups.get(v, {}).get("test_by_seed", {}) for v in ("mqsa_ted", BASELINE))
    if not (common := common_seeds([ours, base])):
        return None
    gains = PAPER["relative_gain_over_best_baseline"].get(dataset, {})

    def mean(by_seed: dict, metric: str) -> float:
        return float(np.mean([by_seed[seed][metric] for seed in common]))

    line = (f"MQSA-TED over SASRec (relative, on {seed_list(common)}, which both finished): "
            + ", ".join(f"{m} {relative_gap(mean(ours, m), mean(base, m))}"
                        for m in ("HR@5", "NDCG@5", SELECTION)))
    if gains:
        line += ("; the paper's gain over its best baseline (not necessarily SASRec): "
                 + ", ".join(f"{m} {100 * g:+.1f}%" for m, g in gains.items()))
    return line + "."


def baseline_line(groups: dict, dataset: str) -> str | None:
    """Our baseline against the level of the paper's best baseline that its gains imply:
    MQSA-TED's figure / (1 + gain)."""
    paper, gains = (PAPER[k].get(dataset, {}) for k in ("mqsa_ted",
                                                        "relative_gain_over_best_baseline"))
    implied = {m: paper[m] / (1 + g) for m, g in gains.items() if m in paper}
    ours = groups.get(BASELINE, {})
    if not implied or not ours.get("seeds"):
        return None
    return ("SASRec here against the paper's best baseline as its gain implies it "
            "(MQSA-TED's figure / (1 + gain)): "
            + ", ".join(f"{m} {ours['test'][m]['mean']:.4f} against {level:.4f} "
                        f"({relative_gap(ours['test'][m]['mean'], level)})"
                        for m, level in implied.items()) + ".")


def _pending_lines(groups: dict, name=VARIANTS.get) -> list[str]:
    """One line per unfinished seed of ``groups`` (a name, as ``name`` gives it -> its group)."""
    lines = []
    for key, g in groups.items():
        for seed, p in g["pending"].items():
            line = f"- {name(key)}, seed {seed}: epoch {p['epochs_done']} of {p['epochs']}"
            if p["epochs_done"] and not p.get("resumable", True):
                line += (", no checkpoint in this checkout: it resumes only where its checkpoint "
                         "was kept, else restarts from epoch 1")
            elif p["epochs_done"] and p["epochs"]:
                left = (p["epochs"] - p["epochs_done"]) * p["seconds_per_epoch_recent"]
                line += f", about {duration(left)} more at the pace of its last epochs"
            if b := p["best_so_far"]:
                line += (f" (best so far: epoch {b['epoch']}, valid {SELECTION} "
                         f"{b['valid'][SELECTION]:.4f}, test HR@5 {b['test']['HR@5']:.4f}, "
                         f"NDCG@5 {b['test']['NDCG@5']:.4f}, {SELECTION} "
                         f"{b['test'][SELECTION]:.4f})")
            lines.append(line)
    return lines


def _figure(figures: Collection[Path], alt: str, dataset: str, param: str | None = None
            ) -> list[str]:
    """A plot as a markdown image, if it was drawn (``figures``: as :func:`figure_path` gives)."""
    path = figure_path(dataset, param)
    return [f"![{alt}]({path.as_posix()})", ""] if path in figures else []


def _dataset_section(dataset: str, groups: dict, figures: Collection[Path], studies: dict
                     ) -> list[str]:
    rows = []
    for variant in (v for v in VARIANTS if v in groups):
        g = groups[variant]
        seconds = list(g["train_eval_seconds"].values())
        rows.append([VARIANTS[variant], ", ".join(map(str, g["seeds"])) or "pending",
                     *(mean_std(g["test"].get(m)) for m in METRICS),
                     ", ".join(map(str, g["best_epoch"].values())) or "–",
                     duration(min(seconds)) if seconds else "–"])
    paper = PAPER["mqsa_ted"].get(dataset)
    if paper:
        rows.append(["MQSA-TED, paper", "–", *(f"{paper[m]:.4f}" if m in paper else "–"
                                               for m in METRICS), "–", "–"])
    out = [f"## {dataset}", "", *table(["model", "seeds", *METRICS, "best epoch",
                                        "train + eval time, fastest seed"], rows), "",
           *_figure(figures, f"{dataset}: validation {SELECTION} per epoch", dataset)]
    ours = groups.get("mqsa_ted")
    if paper and ours and ours["seeds"]:
        gaps = ", ".join(f"{m} {relative_gap(ours['test'][m]['mean'], paper[m])}" for m in paper)
        upper = ours["test_max_over_epochs"]
        ceiling = ", ".join(f"{m} {mean_std(upper[m])} "
                            f"({relative_gap(upper[m]['mean'], paper[m])})" for m in paper)
        out += [f"MQSA-TED against the paper (relative): {gaps}.", "",
                "Not the protocol, for comparison only: each seed's best test figure over all "
                "its epochs (the epoch chosen by test, for each metric on its own), mean over "
                f"the seeds, and its gap to the paper: {ceiling}.", ""]
    for variant, g in groups.items():
        if reference := g.get("runs_of"):
            out += [f"{VARIANTS[variant]}: its search's best is the reference config, so its "
                    f"seeds are the {VARIANTS[reference]} runs.", ""]
    for line in (paper_verdict_line(groups, dataset),
                 ordering_line(groups), ordering_line(groups, TUNED_ORDERING),
                 gain_line(groups, dataset),
                 baseline_line(groups, dataset),
                 *(search_line(dataset, model, facts) for model, facts in studies.items())):
        if line:
            out += [line, ""]
    if pending := _pending_lines(groups):
        out += ["Pending (not in the means above):", *pending, ""]
    if machines := sorted({m for g in groups.values() for m in g["machines"]}):
        out += ["Machines: " + "; ".join(machines) + ".", ""]
    return out


def _sweep_section(dataset: str, param: str, points: dict, figures: Collection[Path]
                   ) -> list[str]:
    """A sweep's table, each point at the mean of its finished seeds; where some point has more
    seeds than the others (the reference point reuses a variant's runs), one more column gives
    test NDCG@20 on the seeds they all finished, the figures the claim is judged on."""
    seeds, scores = sweep_scores(points)
    shared = bool(scores) and any(len(g["seeds"]) > len(seeds) for g in points.values())
    header = [param, "seeds", f"valid {SELECTION}", "test HR@5", "test NDCG@5",
              f"test {SELECTION}"] + ([f"test {SELECTION}, {seed_list(seeds)}"] if shared else [])
    rows = [[value, ", ".join(map(str, g["seeds"])) or "pending",
             mean_std(g["valid"].get(SELECTION)), mean_std(g["test"].get("HR@5")),
             mean_std(g["test"].get("NDCG@5")), mean_std(g["test"].get(SELECTION))]
            + ([f"{scores[float(value)]:.4f}" if float(value) in scores else "–"]
               if shared else [])
            for value, g in points.items()]
    out = [f"## Sweep of {param} on {dataset} (MQSA-TED, others at the reference)", "",
           *table(header, rows), "",
           *_figure(figures, f"{dataset}: {SELECTION} against {param}", dataset, param)]
    if line := claim_line(param, points):
        out += [line, ""]
    if pending := _pending_lines(points, name=lambda value: f"{param} = {value}"):
        out += ["Pending (not in the table above):", *pending, ""]
    return out


def markdown(summary: dict, sweeps: dict, figures: Collection[Path] = (),
             studies: dict | None = None) -> str:
    """``summary.md``: a section per dataset, then per sweep; ``figures`` are the plots drawn,
    relative to it (as :func:`experiments.reproduction.plots.figure_path` gives), shown in
    their sections; ``studies``, the searches of the tuned variants (as
    :func:`experiments.reproduction.searches.searches` gives them), in their datasets'."""
    out = ["# Reproduction results", "",
           "Written by `python -m experiments.reproduction.reproduce` from the run directories "
           "beside this file (do not edit). Test metrics at each run's first epoch with the best "
           f"validation {SELECTION} (the reference's protocol: full ranking of all items, "
           "history masked); mean ± sample standard deviation over the finished seeds. Paper "
           f"figures: `experiments/reference/paper_results.json` ({PAPER['source']}). Times are "
           f"wall times on a machine that other jobs may have shared (each run's `{PROVENANCE}` "
           "has the load average and nice level at each start), so the table gives the fastest "
           "seed's.", ""]
    for dataset, groups in summary.items():
        out += _dataset_section(dataset, groups, figures, (studies or {}).get(dataset, {}))
    for dataset, params in sweeps.items():
        for param, points in params.items():
            out += _sweep_section(dataset, param, points, figures)
    return "\n".join(out)
