"""Reproduces the paper: the main comparison, the ablations, the sweeps, their tables and plots.

    python -m experiments.reproduction.reproduce main [--datasets beauty toys]
        [--seeds 2023 2024 2025] [--workers 2]
    python -m experiments.reproduction.reproduce ablation [--datasets beauty] [--seeds 2023]
    python -m experiments.reproduction.reproduce sweep L|alpha|lambda_kd|tau [--values 1 5]
        [--datasets beauty]
    python -m experiments.reproduction.reproduce summary

(`make reproduce`, `make ablation` and `make sweep PARAM=L` wrap the first three.)

The runs are planned in :mod:`~experiments.reproduction.plan` (which config, which seed, which
directory), run by :mod:`~experiments.reproduction.runner`, collected by
:mod:`~experiments.reproduction.summary`, and reported by :mod:`~experiments.reproduction.report`
(summary.md), :mod:`~experiments.reproduction.readme` (the README's table) and
:mod:`~experiments.reproduction.plots`.  A finished run (it has its results) is skipped and a
started one is resumed from its latest checkpoint, so an interrupted reproduction continues where
it stopped.
Each run directory also gets a provenance file (:mod:`mqsa_jax.rundir`): the command and, per
(re)start, the machine.
After every run, and with ``summary``, the summary is rewritten from whatever runs exist,
finished or not: ``summary.json``, ``summary.md``, ``sweeps.json`` and the PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.reproduction import plan, plots, readme, report
from experiments.reproduction.runner import execute, interrupt_on_sigterm, worker_count
from experiments.reproduction.searches import searches
from experiments.reproduction.summary import collect
from mqsa_jax.config import parse_overrides
from mqsa_jax.evaluation import SELECTION_METRIC
from mqsa_jax.io import write_json_atomic, write_text_atomic


def write_summary(results: Path) -> None:
    summary, sweeps = collect(results)
    studies = searches(results)
    write_json_atomic(results / "summary.json", summary)
    if sweeps:
        write_json_atomic(results / "sweeps.json", sweeps)
    # The plots first: summary.md shows those that were drawn.
    figures = {path.relative_to(results) for path in plots.plot(summary, sweeps, results)}
    write_text_atomic(results / "summary.md", report.markdown(summary, sweeps, figures, studies))
    if results.resolve() == plan.DEFAULT_RESULTS:  # the project's own results: the README's
        readme.update_readme(plan.HERE.parent / "README.md",
                             readme.readme_table(summary, sweeps, results, studies=studies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--results", type=Path, default=plan.DEFAULT_RESULTS,
                      help="results folder (default: experiments/results)")
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    common.add_argument("--datasets", nargs="+", default=["beauty"])
    common.add_argument("--seeds", nargs="+", type=int, default=[2023])
    common.add_argument("--epochs", type=int, help="override the reference's 200 epochs")
    common.add_argument("--workers", type=worker_count, default=1,
                        help="runs at once, each on its own share of the cores (default 1; on a "
                             "CPU machine, one per core trains more runs an hour)")
    common.add_argument("--patience", type=int,
                        help="stop a run after this many evaluations without a better "
                             f"valid {SELECTION_METRIC} (default: never, as the reference)")
    for name, variants in (("main", plan.MAIN_VARIANTS), ("ablation", plan.ABLATION_VARIANTS)):
        sub.add_parser(name, parents=[common]).add_argument(
            "--variants", nargs="+", choices=list(plan.VARIANTS), default=list(variants),
            help=f"default: {' '.join(variants)}")
    sweep = sub.add_parser("sweep", parents=[common])
    sweep.add_argument("param", choices=sorted(plan.SWEEPS))
    sweep.add_argument("--values", nargs="+", type=float,
                       help="run only these of the parameter's points, in this order (default: "
                            "all of experiments/configs/sweep.py's)")
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
        points = plan.SWEEPS[args.param]
        if unknown := [f"{v:g}" for v in args.values or () if v not in points]:
            parser.error(f"--values: {', '.join(unknown)} not among the points of "
                         f"{args.param} ({', '.join(f'{v:g}' for v in points)}); add it to "
                         "experiments/configs/sweep.py first")
        runs = plan.sweep_runs(args.param, args.datasets, args.seeds, args.results, args.values)
    else:
        runs = plan.variant_runs(args.variants, args.datasets, args.seeds, args.results)
    interrupt_on_sigterm()
    try:
        failed = execute(runs, extra, lambda: write_summary(args.results), args.workers)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    write_summary(args.results)
    print(f"wrote {args.results / 'summary.md'}" + (f"; {failed} run(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
