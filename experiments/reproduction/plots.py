"""The reproduction's plots: validation curves per dataset, and one plot per sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.markdown import seed_list
from experiments.reproduction.plan import VARIANTS
from experiments.reproduction.summary import run_status, sweep_scores
from mqsa_jax.evaluation import SELECTION_METRIC
from mqsa_jax.io import atomic_output

FOLDER = Path("plots")


def figure_path(dataset: str, param: str | None = None) -> Path:
    """Where a plot lives, relative to the results folder (and so to ``summary.md``): a
    dataset's validation curves, or the sweep of ``param`` on it."""
    return FOLDER / (f"{dataset}_sweep_{param}.png" if param else f"{dataset}_valid_ndcg20.png")


def mean_curve(run_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Validation NDCG@20 per epoch, averaged over the seeds that reached each epoch."""
    per_epoch: dict[int, list[float]] = {}
    for run_dir in run_dirs:
        for record in run_status(run_dir)["history"]:
            if "valid" in record:
                per_epoch.setdefault(record["epoch"], []).append(
                    record["valid"][SELECTION_METRIC])
    epochs = np.array(sorted(per_epoch))
    return epochs, np.array([np.mean(per_epoch[e]) for e in epochs])


def plot(summary: dict, sweeps: dict, results: Path) -> list[Path]:
    """Draws each dataset's validation curves and each sweep with two finished points or more
    into ``results`` (at :func:`figure_path`), and removes the plots it no longer draws (a point
    whose run was removed) so that none outlives its data; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    (results / FOLDER).mkdir(exist_ok=True)
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
                color = ax.plot(*mean_curve(finished),
                                label=f"{VARIANTS[variant]} ({seeds})")[0].get_color()
            for seed in group["pending"]:
                epochs, curve = mean_curve([results / dataset / variant / f"seed{seed}"])
                if len(epochs):
                    color = ax.plot(epochs, curve, "--", color=color, linewidth=1,
                                    label=f"{VARIANTS[variant]} (seed {seed}, unfinished)"
                                    )[0].get_color()
        # The variants differ by a few percent after the first epochs' climb: zoom in on that.
        later = [y for line in ax.get_lines() for x, y in zip(*line.get_data()) if x >= 10]
        if later:
            ax.set_ylim(bottom=0.95 * min(later))
        ax.set(xlabel="epoch", ylabel=f"validation {SELECTION_METRIC}", title=dataset)
        ax.grid(alpha=0.3)
        if ax.get_lines():  # a dataset whose runs have no epoch yet has nothing to name
            ax.legend()
        written.append(_save(fig, results / figure_path(dataset)))
    for dataset, params in sweeps.items():
        for param, points in params.items():
            # On the seeds every finished point has, as the claims are judged; a curve needs two.
            curves = {split: sweep_scores(points, split) for split in ("valid", "test")}
            seeds, finished = curves["test"]
            if len(finished) < 2:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for split, (_, scores) in curves.items():
                values = sorted(scores)
                ax.plot(values, [scores[v] for v in values], marker="o", label=split)
            if param in ("lambda_kd", "tau"):  # symlog: lambda_kd's point 0 stays on the axis
                ax.set_xscale("symlog", linthresh=0.01)
            ax.set(xlabel=param, ylabel=SELECTION_METRIC,
                   title=f"{dataset}: MQSA-TED, {param} ({seed_list(seeds)})")
            ax.grid(alpha=0.3)
            ax.legend()
            written.append(_save(fig, results / figure_path(dataset, param)))
    for stale in set((results / FOLDER).glob("*.png")) - set(written):
        stale.unlink()
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
