"""Times one full evaluation (valid and test, all users, all items) by form of the ranking's
N-wide count and by users per step, in one process, on one machine.

    python -m experiments.benchmarks.eval_speed [--datasets beauty sports] [--repeats 3]

The forms: the arithmetic one the evaluator uses (:func:`mqsa_jax.evaluation._count_beating`)
and the comparisons it falls back to for catalogues of 2^24 items or more.  The batch sizes:
1024 users per step (the default before) and 256 (the default now).  Every case ranks with the
same (initial) parameters; their metrics must agree.  Writes ``eval_speed.json`` and ``.md`` in
``--results``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from experiments.markdown import table
from experiments.measure import machine, machine_line, median_seconds
from mqsa_jax import evaluation
from mqsa_jax.config import resolve
from mqsa_jax.evaluation import RankingEvaluator
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.model import MQSA
from mqsa_jax.runs import prepare_data
from mqsa_jax.state import init_state, make_optimizer

HERE = Path(__file__).resolve().parents[1]  # experiments/
FORMS = {"comparison": 0, "arithmetic": evaluation.FLOAT_EXACT}  # form -> arithmetic_below
CASES = (("comparison", 1024), ("arithmetic", 1024), ("comparison", 256), ("arithmetic", 256))


def time_dataset(dataset: str, repeats: int) -> dict:
    """One dataset's seconds per full evaluation in each case, and whether the cases agree."""
    config = resolve(f"{HERE / 'configs'}/mqsa_ted.py:{dataset}", [])
    data = prepare_data(config)
    model = MQSA(config.model, data.num_items)
    params = init_state(model, make_optimizer(config), config).params
    record = {"dataset": dataset, "users": len(data.valid_labels), "items": data.num_items,
              "seconds": {}}
    metrics = []
    for form, batch in CASES:
        evaluators = [RankingEvaluator(split, data, model.encode_last, batch,
                                       arithmetic_below=FORMS[form])
                      for split in ("valid", "test")]

        def evaluate(evaluators=evaluators):
            return [e.evaluate(params) for e in evaluators]

        record["seconds"][f"{form} {batch}"] = round(median_seconds(evaluate, repeats), 3)
        metrics.append([list(m.values()) for m in evaluate()])
    # Ranks are exact in every case; the means may differ in the last bits (sums by batch).
    record["largest_metric_difference"] = float(np.max(np.abs(np.diff(metrics, axis=0))))
    return record


def markdown(results: dict) -> str:
    cases = [f"{form} {batch}" for form, batch in CASES]
    rows = []
    for r in results["datasets"]:
        seconds = r["seconds"]
        rows.append([r["dataset"], f"{r['users']:,}", f"{r['items']:,}",
                     *(f"{seconds[c]:.2f}" for c in cases),
                     f"{seconds[cases[0]] / seconds[cases[-1]]:.2f}x",
                     f"{r['largest_metric_difference']:.1e}"])
    header = ["dataset", "users", "items", *(f"{c} s" for c in cases),
              f"{cases[0]} / {cases[-1]}", "largest metric difference"]
    return (f"# Evaluation: one full ranking of valid and test, by form of the N-wide count and "
            f"users per step\n\nCommand: `{results['command']}`\n\n"
            f"Machine: {machine_line(results['machine'])}\n\n"
            "Seconds: median of the repeats, compilation excluded, all cases in one process with "
            "the same initial parameters.  `comparison 1024` is the evaluation before this "
            "change, `arithmetic 256` after it.\n\n" + "\n".join(table(header, rows)) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["beauty", "sports"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    results = {"command": "python -m experiments.benchmarks.eval_speed "
               + " ".join(argv or sys.argv[1:]), "machine": machine(), "datasets": []}
    for dataset in args.datasets:
        results["datasets"].append(time_dataset(dataset, args.repeats))
        print(results["datasets"][-1], file=sys.stderr, flush=True)
    path = args.results / "eval_speed.json"
    write_json_atomic(path, results)
    write_text_atomic(path.with_suffix(".md"), markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
