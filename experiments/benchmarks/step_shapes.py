"""What the step-shape plan (``mqsa_jax.step_shapes``) compiles and what its padding costs.

    python -m experiments.benchmarks.step_shapes [--datasets beauty yelp] [--epochs 8]
        [--rounds 4] [--out experiments/results/step_shapes]

Per dataset, with the reference hyperparameters:

- ``plan``: the run's shuffles packed on the host for ``--epochs`` epochs and passed through the
  plan as training passes them: the shapes compiled in each epoch, the batches run padded and
  their extra work (targets, a packed row weighted as in the plan);
- ``steady``: after three epochs, training epochs timed with the plan (the default
  ``compile_cost_steps``) and with every shape compiled (``compile_cost_steps=0``), in one
  process and in alternation, ``--rounds`` times; each timed epoch follows an untimed pass over
  the same order on a copy of the state, so no compilation is timed.  Alone on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.markdown import table
from experiments.measure import machine_line
from mqsa_jax.config import TrainConfig, build_config
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.runs import prepare_data
from mqsa_jax.trainer import Trainer

DEFAULT_COST = TrainConfig.compile_cost_steps


def plan_epochs(trainer: Trainer, epochs: int) -> list[dict]:
    """The plan's choices over ``epochs`` of the run's shuffles (host only: nothing runs)."""
    plan, data = trainer.shapes, trainer.data
    rng = np.random.default_rng(trainer.config.seed)
    rows = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(data.num_users)
        shapes = [batch.shape for batch, _ in trainer.packing.batches(order)]
        before = set(plan.compiled)
        run = [batch.shape for batch, _ in
               trainer.shard.batches(trainer.packing, order, 0, len(shapes), plan)]
        rows.append({"epoch": epoch, "batches": len(shapes),
                     "own_shapes": len(set(shapes)),
                     "compiled": sorted(map(list, plan.compiled - before)),
                     "padded_batches": sum(a != b for a, b in zip(shapes, run)),
                     "extra_work": round(sum(map(plan.work, run))
                                         / sum(map(plan.work, shapes)) - 1, 4)})
    return rows


def steady_epochs(name: str, rounds: int) -> dict:
    """Seconds per training epoch with the plan and with every shape compiled, alternating."""
    runs = {}
    for cost in (DEFAULT_COST, 0.0):
        config = build_config({"dataset": name, "compile_cost_steps": cost})
        trainer = Trainer(config, prepare_data(config))
        state = trainer.init_state()
        rng = np.random.default_rng(config.seed)
        for _ in range(3):
            state, _ = trainer.train_epoch(state, rng.permutation(trainer.data.num_users))
        runs[cost] = [trainer, state]
    seconds = {cost: [] for cost in runs}
    rng = np.random.default_rng(7)
    for round_ in range(rounds):
        order = rng.permutation(runs[0.0][0].data.num_users)
        for cost in sorted(runs, reverse=round_ % 2 == 0):
            trainer, state = runs[cost]
            trainer.train_epoch(jax.tree.map(jnp.copy, state), order)
            start = time.perf_counter()
            runs[cost][1], _ = trainer.train_epoch(state, order)
            seconds[cost].append(round(time.perf_counter() - start, 3))
    median = {cost: float(np.median(s)) for cost, s in seconds.items()}
    return {"plan_seconds": seconds[DEFAULT_COST], "every_shape_seconds": seconds[0.0],
            "plan_median": round(median[DEFAULT_COST], 3),
            "every_shape_median": round(median[0.0], 3),
            "plan_extra": round(median[DEFAULT_COST] / median[0.0] - 1, 4),
            "plan_shapes": len(runs[DEFAULT_COST][0].shapes.compiled),
            "every_shape_shapes": len(runs[0.0][0].shapes.compiled)}


def markdown(report: dict) -> str:
    lines = [f"# Step shapes ({report['date']}; {report['machine']})", "",
             f"Command: `{report['command']}`, alone.  `compile_cost_steps` "
             f"{DEFAULT_COST:g} (the default) against 0 (every shape compiled).", ""]
    for name, entry in report["datasets"].items():
        lines += [f"## {name}", "", "The plan over the run's first epochs (host only):", ""]
        lines += table(["epoch", "batches", "own shapes", "compiled", "padded batches",
                        "extra work"],
                       [[r["epoch"], r["batches"], r["own_shapes"],
                         " ".join(f"{a}x{b}" for a, b in r["compiled"]) or "-",
                         r["padded_batches"], f"{r['extra_work']:.1%}"] for r in entry["plan"]])
        s = entry["steady"]
        lines += ["", f"Training epochs after three, {len(s['plan_seconds'])} alternating "
                      f"rounds: with the plan {s['plan_seconds']} s (median "
                      f"{s['plan_median']}, {s['plan_shapes']} shapes compiled), every shape "
                      f"{s['every_shape_seconds']} s (median {s['every_shape_median']}, "
                      f"{s['every_shape_shapes']} shapes): **{s['plan_extra']:+.1%}**.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["beauty", "yelp"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="experiments/results/step_shapes")
    args = parser.parse_args()
    report = {"command": "python -m experiments.benchmarks.step_shapes " + " ".join(sys.argv[1:]),
              "machine": machine_line(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "datasets": {}}
    for name in args.datasets:
        config = build_config({"dataset": name})
        report["datasets"][name] = {
            "plan": plan_epochs(Trainer(config, prepare_data(config)), args.epochs),
            "steady": steady_epochs(name, args.rounds)}
        write_json_atomic(Path(f"{args.out}.json"), report)  # partial results
    write_text_atomic(Path(f"{args.out}.md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
