"""The forward scan's logits products in each operand precision and table layout.

    python -m experiments.benchmarks.product_layouts [--rows 6144] [--block 1024]
        [--out experiments/results/product_layouts]

``rows x 64`` states against a table of 12 blocks of ``block`` items, scanned block by block
as :mod:`mqsa_jax.item_blocks` does, each block's logits summed (so the product is not
optimised away), accumulated in float32: float32 operands with the table by rows (each block
transposed in the product); bfloat16 with the table by columns (``[64, N]``, sliced
``[64, block]``: what ``item_blocks`` reads); bfloat16 with the table by rows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.markdown import table
from experiments.measure import machine_line, median_seconds
from mqsa_jax.io import write_text_atomic

HIDDEN = 64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=6144)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--out", default="experiments/results/product_layouts")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    states = rng.standard_normal((args.rows, HIDDEN), np.float32)

    blocks = 12
    items = rng.standard_normal((blocks * args.block, HIDDEN), np.float32)
    size = args.block

    def scan(dtype, by_columns):
        a = jnp.asarray(states, dtype)
        t = jnp.asarray(items.T.copy() if by_columns else items, dtype)

        def step(total, index):
            if by_columns:
                right = jax.lax.dynamic_slice_in_dim(t, index * size, size, axis=1)
            else:
                right = jax.lax.dynamic_slice_in_dim(t, index * size, size, axis=0).T
            z = jnp.matmul(a, right, preferred_element_type=jnp.float32)
            return total + z.sum(axis=1), None

        run = jax.jit(lambda: jax.lax.scan(step, jnp.zeros(len(states)), jnp.arange(blocks))[0])
        return median_seconds(run) * 1e3

    cases = {"float32, table by rows": scan(jnp.float32, False),
             "bfloat16, table by columns": scan(jnp.bfloat16, True),
             "bfloat16, table by rows": scan(jnp.bfloat16, False)}
    flops = 2 * args.rows * HIDDEN * args.block * blocks
    lines = [f"# The forward scan's logits products ({time.strftime('%Y-%m-%d %H:%M')}; "
             f"{machine_line()})", "",
             f"Command: `python -m experiments.benchmarks.product_layouts --rows {args.rows} "
             f"--block {args.block}`: [{args.rows}, {HIDDEN}] states against {blocks} blocks of "
             f"{args.block} items, float32 accumulation, median of repeats.", "",
             *table(["operands", "ms", "GFLOP/s"],
                    [[name, round(ms, 3), round(flops / ms / 1e6)] for name, ms in cases.items()])]
    write_text_atomic(Path(f"{args.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
