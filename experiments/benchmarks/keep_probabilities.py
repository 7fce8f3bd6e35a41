"""Whether the backward pass should keep the forward's probabilities instead of recomputing them
(issue 44, point 3): the product it would save against the memory traffic it would cost.

    python -m experiments.benchmarks.keep_probabilities [--dataset beauty]
        [--out experiments/results/keep_probabilities]

On the epoch's median step shape of DATASET (TED's rows: the recommendation rows and as many
student rows), times, jitted and alone:

- ``recompute``: the product the backward would skip, ``[rows, d] x [d, N]`` block by block
  through the library's own scan, each block's logits reduced in cache (what recomputing costs);
- ``keep``: the probabilities written whole by the forward and read back by the backward, as a
  scan that stacks each block's ``exp`` and a pass that reads the ``[rows, N]`` stack (what
  keeping costs besides the memory itself, with no product in either).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments.markdown import table
from experiments.measure import machine_line, median_seconds
from mqsa_jax.blocked import DEFAULT_BLOCK
from mqsa_jax.config import build_config
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.item_blocks import Block, scan_blocks
from mqsa_jax.runs import prepare_data
from mqsa_jax.trainer import Trainer


def median_capacity(dataset: str) -> tuple[int, int, int]:
    """The epoch's median packed-target capacity, N and d of ``dataset``'s reference config."""
    config = build_config({"dataset": dataset})
    data = prepare_data(config, None)
    trainer = Trainer(config, data)
    order = np.random.default_rng(0).permutation(data.num_users)
    capacities = sorted(batch.capacity for batch, _ in trainer.packing.batches(order))
    return capacities[len(capacities) // 2], data.num_items, config.model.hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--out", default="experiments/results/keep_probabilities")
    args = parser.parse_args()
    capacity, n, d = median_capacity(args.dataset)
    rows_count = 2 * capacity  # recommendation rows and TED's student rows
    rng = np.random.default_rng(0)
    rows = jnp.asarray(rng.normal(size=(rows_count, d)) * 0.3, jnp.float32)
    table_ = jnp.asarray(rng.normal(size=(n, d)) * 0.3, jnp.float32)

    def logits_scan(keep: bool):
        def step(total, items: Block):
            p = items.only_counted(jnp.exp(items.logits(rows)))
            return total + p.sum(axis=2), (p if keep else None)
        init = jnp.zeros((rows_count, 1), jnp.float32)
        return scan_blocks(step, init, table_, DEFAULT_BLOCK, 1, n, "float32")[:2]

    recompute = jax.jit(lambda: logits_scan(False)[0])
    stacked = jax.jit(lambda: logits_scan(True))
    read_back = jax.jit(lambda kept: (kept * 1.5).sum(axis=(0, 3)))
    kept = stacked()[1]
    seconds = {
        "recompute_product_and_exp": median_seconds(recompute),
        "forward_with_probabilities_kept": median_seconds(lambda: stacked()[1]),
        "backward_read_of_kept": median_seconds(lambda: read_back(kept)),
    }
    kept_bytes = int(np.prod(kept.shape)) * 4
    report = {"machine": machine_line(), "dataset": args.dataset, "rows": rows_count, "N": n,
              "d": d, "kept_megabytes": round(kept_bytes / 1e6, 1),
              "milliseconds": {k: round(v * 1000, 2) for k, v in seconds.items()}}
    keep_cost = (seconds["forward_with_probabilities_kept"] - seconds["recompute_product_and_exp"]
                 + seconds["backward_read_of_kept"])
    report["keeping_minus_recomputing_ms"] = round(
        (keep_cost - seconds["recompute_product_and_exp"]) * 1000, 2)
    write_json_atomic(f"{args.out}.json", report)
    lines = [f"# Keeping the probabilities against recomputing them ({args.dataset})", "",
             f"{report['machine']}. Command: `python -m experiments.benchmarks.keep_probabilities"
             f" --dataset {args.dataset}`.", "",
             f"One step's shape: {rows_count} rows (recommendation and student) x {n} items, "
             f"d = {d}; kept, the probabilities take {report['kept_megabytes']} MB.", "",
             *table(["part", "ms"], [[k.replace("_", " "), v]
                                     for k, v in report["milliseconds"].items()]), "",
             "Keeping costs the forward's extra writes (its time with the stack less its time "
             "without) and the backward's read; recomputing costs one product and exp: "
             f"keeping minus recomputing = {report['keeping_minus_recomputing_ms']} ms per "
             "step (positive: recomputing is cheaper)."]
    write_text_atomic(f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
