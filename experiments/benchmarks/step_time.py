"""Train- and evaluation-step milliseconds without compilation, for comparing checkouts in one
sitting and one process.

    python -m experiments.benchmarks.step_time DATASET CHECKOUT [CHECKOUT ...] [--rounds 12]
        [--set NAME=VALUE ...]

Imports ``mqsa_jax`` from each CHECKOUT in turn (another commit's worktree, a copy of the
package's parent folder, or this one), packs the first 6 batches of a fixed shuffle of
DATASET, compiles their shapes and builds 6 validation ranking steps of that shuffle's first
users.  Then it times the checkouts in alternation, ``--rounds`` times, in alternating order:
the machine's drift (the same step varied 100-130 ms within minutes here) falls on every
checkout alike.  Prints one JSON line per checkout: the minimum and median ms per step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time


def _timed(run) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def import_from(checkout: str, *modules: str) -> list:
    """``modules`` of ``mqsa_jax`` imported afresh from ``checkout`` (a folder holding the
    package), after dropping whatever ``mqsa_jax`` was imported before."""
    for name in [m for m in sys.modules if m == "mqsa_jax" or m.startswith("mqsa_jax.")]:
        del sys.modules[name]
    sys.path.insert(0, checkout)
    try:
        return [importlib.import_module(f"mqsa_jax.{module}") for module in modules]
    finally:
        sys.path.remove(checkout)


def _load(checkout: str, dataset: str, overrides: list[str]):
    """The train and ranking passes of ``checkout``'s ``mqsa_jax``, compiled."""
    import numpy as np

    config_module, evaluation, runs, trainer_module = import_from(
        checkout, "config", "evaluation", "runs", "trainer")
    build_config, parse_overrides = config_module.build_config, config_module.parse_overrides
    RankingEvaluator, prepare_data = evaluation.RankingEvaluator, runs.prepare_data
    Trainer = trainer_module.Trainer
    config = build_config({"dataset": dataset}, parse_overrides(overrides))
    data = prepare_data(config, None)
    trainer = Trainer(config, data)
    state = {"now": trainer.init_state()}
    order = np.random.default_rng(0).permutation(data.num_users)
    batches = [trainer.place(b) for b, _ in trainer.packing.batches(order[:256 * 6])]

    def train():
        for batch in batches:
            state["now"], losses = trainer.train_step(state["now"], trainer.arrays, batch)
        return losses

    size = config.eval.eval_batch_size
    evaluator = RankingEvaluator("valid", data, trainer.model.encode_last, size,
                                 users=order[:size * 6])

    def evaluate():
        return evaluator.evaluate(state["now"].params)

    _timed(train), _timed(evaluate)  # compiles
    return {"train": (train, len(batches)), "eval": (evaluate, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    passes = {checkout: _load(checkout, args.dataset, args.overrides)
              for checkout in args.checkouts}
    ms = {checkout: {"train": [], "eval": []} for checkout in args.checkouts}
    for round_ in range(args.rounds):
        for checkout in args.checkouts[::-1] if round_ % 2 else args.checkouts:
            for part, (run, steps) in passes[checkout].items():
                ms[checkout][part].append(_timed(run) / steps * 1000)
    for checkout, parts in ms.items():
        line = {"checkout": checkout, "dataset": args.dataset, "rounds": args.rounds}
        for part, values in parts.items():
            values = sorted(values)
            line[f"{part}_ms_min"] = round(values[0], 1)
            line[f"{part}_ms_median"] = round(values[len(values) // 2], 1)
        print(json.dumps(line))


if __name__ == "__main__":
    main()
