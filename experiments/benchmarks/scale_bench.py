"""Step time and memory per device on synthetic catalogues, one device against model=8.

    python -m experiments.benchmarks.scale_bench [--items 10000 100000 1000000] [--models 1 8]
                                      [--out experiments/results/scale_bench]

Each (catalogue, mesh) case runs in its own process on 8 host-platform devices
(``--xla_force_host_platform_device_count=8``): a 1 x 1 mesh (one device) or a 1 x ``model``
mesh (the item table and its Adam moments split by rows).  Per case: the bytes of the item
table and its optimizer moments held by one device, XLA's memory analysis of the compiled train
and evaluation steps for one device (arguments + outputs + temporaries - aliased), compile
seconds, and the median time of a few train steps.  A case whose devices would need more host
memory than ``--host-budget-gb`` in total is compiled and analysed but not run.  The synthetic
data: users with 3-50 items drawn from a Zipf-like popularity, the reference hyperparameters;
catalogues above ``--chunk-above`` items use ``item_block``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from experiments.benchmarks.multiprocess import local_process_envs
from experiments.markdown import table
from experiments.measure import machine_line, median_step_seconds
from mqsa_jax.io import write_json_atomic, write_text_atomic

DEVICES = 8


def synthetic_data(num_items: int, num_users: int, seed: int = 0):
    import numpy as np

    from mqsa_jax.data.arrays import build_sequence_data
    from mqsa_jax.data.dataset import from_full_sequences

    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 9, num_users) + 2, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ranks = rng.zipf(1.2, offsets[-1]) - 1  # popular items are the frequent ones
    items = (rng.permutation(num_items)[ranks % num_items]).astype(np.int32)
    dataset = from_full_sequences("synthetic", items, offsets, num_items,
                                  np.arange(num_users).astype(str),
                                  np.arange(num_items).astype(str))
    return build_sequence_data(dataset, max_len=50)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return {"arguments_mb": m.argument_size_in_bytes / 2**20,
            "outputs_mb": m.output_size_in_bytes / 2**20,
            "temporaries_mb": m.temp_size_in_bytes / 2**20,
            "peak_mb": peak / 2**20}


def run_case(num_items: int, model: int, chunk: int, steps: int, budget_gb: float) -> dict:
    import jax
    import numpy as np

    from mqsa_jax.config import build_config
    from mqsa_jax.model import item_table
    from mqsa_jax.partitioning import Partitioner
    from mqsa_jax.trainer import Trainer

    config = build_config({"item_block": chunk})
    data = synthetic_data(num_items, num_users=4 * config.train.batch_size)
    trainer = Trainer(config, data, Partitioner(1, model))
    state = trainer.init_state()
    table = item_table(state.params)
    moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.shape == table.shape]
    table_mb = sum(x.addressable_shards[0].data.nbytes for x in [table, *moments]) / 2**20

    batch, _ = next(trainer.packing.batches(np.arange(config.train.batch_size)))
    batch = trainer.place(batch)
    capacity = batch.capacity
    with trainer.partitioner.activate():  # the mesh the lookups and losses are traced for
        start = time.perf_counter()
        compiled = trainer.train_step.lower(state, trainer.arrays, batch).compile()
        compile_s = time.perf_counter() - start
        eval_compiled = trainer.evaluators[0].lowered(state.params).compile()
    train_memory = _memory(compiled)
    result = {"items": num_items, "mesh": f"data=1,model={model}", "devices": model,
              "item_block": chunk,
              "rows_per_step": capacity * (2 if config.loss.lambda_kd else 1),
              "table_and_moments_mb_per_device": table_mb,
              "train_step_mb_per_device": train_memory,
              "eval_step_mb_per_device": _memory(eval_compiled),
              "compile_s": compile_s}
    needed_gb = train_memory["peak_mb"] * model / 1024
    if needed_gb > budget_gb:
        result["step_s"] = None
        result["not_run"] = f"needs about {needed_gb:.0f} GB of host memory for {model} devices"
        return result
    result["step_s"], state, losses = median_step_seconds(
        lambda s: compiled(s, trainer.arrays, batch), state, steps)
    result["loss"] = float(losses["loss"])
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def markdown(results: list[dict], command: str, machine: str) -> str:
    lines = ["# Scale-out benchmark: synthetic catalogues, one device against model=8", "",
             f"Command: `{command}`  ", f"Machine: {machine}; {DEVICES} host-platform CPU "
             "devices share its cores, so step times compare the layouts' work, not real "
             "accelerators.", "",
             "Memory is per device, from XLA's analysis of the compiled steps (peak = arguments "
             "+ outputs + temporaries - aliased). The train step's arguments include the "
             "state; its temporaries, the N-wide logits (or one chunk of them).", ""]
    rows = [[f"{r['items']:,}", r["mesh"], r["item_block"] or "–",
             f"{r['table_and_moments_mb_per_device']:.1f}",
             f"{r['train_step_mb_per_device']['peak_mb']:.0f}",
             f"{r['train_step_mb_per_device']['temporaries_mb']:.0f}",
             f"{r['eval_step_mb_per_device']['peak_mb']:.0f}",
             f"{r['step_s']:.2f}" if r.get("step_s") else f"not run ({r.get('not_run')})",
             f"{r['compile_s']:.1f}"] for r in results]
    lines += table(["items", "mesh", "item_block", "table + Adam moments MB",
                    "train step peak MB", "train temporaries MB", "eval step peak MB", "step s",
                    "compile s"], rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--chunk-above", type=int, default=500_000)
    parser.add_argument("--chunk", type=int, default=65_536)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--host-budget-gb", type=float, default=14.0)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/scale_bench"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # ITEMS,MODEL,CHUNK: one case, here
    args = parser.parse_args()
    if args.case:
        items, model, chunk = map(int, args.case.split(","))
        print(json.dumps(run_case(items, model, chunk, args.steps, args.host_budget_gb)))
        return

    env = local_process_envs(1, DEVICES)[0]
    results = []
    for items in args.items:
        chunk = args.chunk if items > args.chunk_above else 0
        for model in args.models:
            done = subprocess.run(
                [sys.executable, "-m", "experiments.benchmarks.scale_bench", "--case",
                 f"{items},{model},{chunk}", "--steps", str(args.steps),
                 "--host-budget-gb", str(args.host_budget_gb)],
                env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"case {items} items, model={model} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    command = " ".join(["python -m experiments.benchmarks.scale_bench", *sys.argv[1:]])
    machine = machine_line()
    write_json_atomic(args.out.with_suffix(".json"),
                      {"command": command, "machine": machine, "results": results})
    write_text_atomic(args.out.with_suffix(".md"), markdown(results, command, machine))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
