"""The README's results table, regenerated from the runs between two markers in README.md."""

from __future__ import annotations

from pathlib import Path

from experiments.markdown import mean_std, seed_list, table
from experiments.reproduction.claims import claim_verdict
from experiments.reproduction.paper import PAPER, PAPER_BAR, PAPER_METRIC, paper_verdicts
from experiments.reproduction.plan import PLANNED, PLANNED_SWEEPS, VARIANTS
from experiments.reproduction.searches import search_line
from experiments.reproduction.summary import sweep_progress
from mqsa_jax.io import write_text_atomic

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
TUNING_FOLDER = "experiments/results/tuning"  # as the README links the studies' summaries


def readme_table(summary: dict, sweeps: dict, results: Path, planned: dict = PLANNED,
                 planned_sweeps: dict = PLANNED_SWEEPS, studies: dict | None = None) -> str:
    """The README's results table: test metrics of what was run, and what is pending, started
    or not, among the ``planned`` runs; then how far the planned sweeps are, and whether the
    paper's claim about each swept parameter holds (``summary``, ``sweeps``: as
    :func:`experiments.reproduction.summary.collect` gives them); then the searches behind the
    tuned variants (``studies``: as :func:`experiments.reproduction.searches.searches`)."""
    shown = ("HR@5", "NDCG@5", "NDCG@20")
    rows = []
    datasets = list(dict.fromkeys([*planned, *summary]))
    for dataset in datasets:
        groups, planned_seeds = summary.get(dataset, {}), planned.get(dataset, {})
        for variant in (v for v in VARIANTS if v in groups or v in planned_seeds):
            g = groups.get(variant, {"seeds": [], "test": {}, "pending": {}})
            pending = [f"seed {s}: epoch {p['epochs_done']}/{p['epochs']}"
                       for s, p in g["pending"].items()]
            if waiting := [s for s in planned_seeds.get(variant, ())
                           if s not in g["seeds"] and str(s) not in g["pending"]]:
                pending.append(f"{seed_list(waiting)}: not started")
            rows.append([dataset, VARIANTS[variant], ", ".join(map(str, g["seeds"])) or "–",
                         *(mean_std(g["test"].get(m)) for m in shown),
                         ", ".join(pending) or "–"])
        if paper := PAPER["mqsa_ted"].get(dataset):
            rows.append([dataset, "MQSA-TED, paper", "–",
                         *(f"{paper[m]:.4f}" if m in paper else "–" for m in shown), "–"])
    lines = table(["dataset", "model", "seeds done", *shown, "pending"], rows)
    if verdicts := [f"- {dataset}: {'; '.join(phrases)}" for dataset in datasets
                    if (phrases := paper_verdicts(summary.get(dataset, {}), dataset, planned))]:
        lines += ["", f"Against the paper's MQSA-TED test {PAPER_METRIC} ({PAPER_BAR}):", "",
                  *verdicts]
    for dataset, seeds in planned_sweeps.items():
        parts = []
        for param, (finished, total) in sweep_progress(results, dataset, seeds).items():
            verdict = claim_verdict(param, sweeps.get(dataset, {}).get(param, {}))
            parts.append(f"{param} {finished}/{total}, " + (
                "not judged yet" if verdict is None else
                verdict.wording + (" (provisional)" if verdict.provisional else "")))
        lines += ["", f"Sweeps on {dataset} (MQSA-TED, {seed_list(seeds)}): runs finished, and "
                      f"whether the paper's claim holds: {'; '.join(parts)}. "
                      "`experiments/results/summary.md` shows each sweep and how its claim is "
                      "judged."]
    if studies:
        lines += ["", "The searches behind the tuned variants:", ""]
        lines += [f"- {dataset}: {search_line(dataset, model, facts, TUNING_FOLDER)}"
                  for dataset, models in studies.items() for model, facts in models.items()]
    return "\n".join(lines)


def update_readme(readme: Path, table_text: str) -> None:
    """Rewrites the README's block between the results markers, if it has them."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    write_text_atomic(readme, head + README_START + "\n" + table_text + "\n" + README_END
                      + rest.split(README_END, 1)[1])
