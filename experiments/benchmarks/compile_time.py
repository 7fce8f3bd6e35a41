"""Where the first epoch's extra seconds go: the train step's compile time per shape, under
XLA:CPU's default options and with less of LLVM's optimisation, and the first epoch's extra
seconds.

    python -m experiments.benchmarks.compile_time [--dataset beauty]
        [--out experiments/results/compile_time]

Each case runs in its own process (nothing compiled by another is reused; the persistent cache
is off), alone on the machine:

- ``step``: one batch's train step (one device) lowered and compiled with XLA's default
  options and with :data:`LESS_LLVM` (not used by the project: over four runs each it saved
  8% of a compile, within the runs' spread);
- ``epoch``: the first epoch and evaluation against the second (their difference is what
  ``bench.py`` reports as compile seconds; the second pays for TED's clamp, which starts
  then, so it is an upper bound).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.markdown import table
from experiments.measure import machine_line
from mqsa_jax.io import write_json_atomic, write_text_atomic

LESS_LLVM = {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True}


def step_case(dataset: str, options: str) -> dict:
    import jax
    import numpy as np

    from mqsa_jax.config import build_config
    from mqsa_jax.runs import prepare_data
    from mqsa_jax.steps import train_step_fn
    from mqsa_jax.trainer import Trainer

    config = build_config({"dataset": dataset})
    trainer = Trainer(config, prepare_data(config))
    state = trainer.init_state()
    batch, _ = next(trainer.packing.batches(np.arange(trainer.data.num_users)))
    batch = trainer.place(batch)
    step = jax.jit(train_step_fn(trainer.model, trainer.optimizer, config), donate_argnums=0,
                   compiler_options=LESS_LLVM if options == "less LLVM" else None)
    start = time.perf_counter()
    lowered = step.lower(state, trainer.arrays, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    return {"lower_s": round(lower_s, 2), "compile_s": round(time.perf_counter() - start, 2)}


def epoch_case(dataset: str, _variant: str) -> dict:
    import numpy as np

    from mqsa_jax.config import build_config
    from mqsa_jax.runs import prepare_data
    from mqsa_jax.trainer import Trainer

    config = build_config({"dataset": dataset})
    trainer = Trainer(config, prepare_data(config))
    state = trainer.init_state()
    rng = np.random.default_rng(config.seed)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        state, _ = trainer.train_epoch(state, rng.permutation(trainer.data.num_users))
        trainer.evaluate(state.params)
        seconds.append(time.perf_counter() - start)
    return {"first_s": round(seconds[0], 2), "second_s": round(seconds[1], 2),
            "extra_s": round(seconds[0] - seconds[1], 1)}


CASES = {"step": (step_case, ("default", "less LLVM")),
         "epoch": (epoch_case, ("first two epochs",))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--out", default="experiments/results/compile_time")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # one case, in a child
    args = parser.parse_args()
    if args.case:
        kind, variant = args.case
        print(json.dumps(CASES[kind][0](args.dataset, variant)))
        return
    report = {"command": "python -m experiments.benchmarks.compile_time " + " ".join(sys.argv[1:]),
              "machine": machine_line(), "date": time.strftime("%Y-%m-%d %H:%M"), "cases": {}}
    for kind, (_, variants) in CASES.items():
        for variant in variants:
            done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.compile_time",
                                   "--dataset", args.dataset, "--case", kind, variant],
                                  capture_output=True, text=True, check=True)
            report["cases"][f"{kind}: {variant}"] = json.loads(done.stdout.splitlines()[-1])
            print(kind, variant, report["cases"][f"{kind}: {variant}"], flush=True)
    write_json_atomic(Path(f"{args.out}.json"), report)
    lines = [f"# Compile time ({report['date']}; {report['machine']})", "",
             f"Command: `{report['command']}`, each case in its own process, alone.", ""]
    for kind in CASES:
        rows = {k.split(": ")[1]: v for k, v in report["cases"].items() if k.startswith(kind)}
        keys = list(next(iter(rows.values())))
        lines += table([kind, *keys], [[name, *r.values()] for name, r in rows.items()]) + [""]
    write_text_atomic(Path(f"{args.out}.md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
