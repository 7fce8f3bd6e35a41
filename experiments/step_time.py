"""Train-step seconds without compilation, for comparing two checkouts in one sitting.

    python -m experiments.step_time CHECKOUT DATASET

Imports ``mqsa_jax`` from CHECKOUT (another commit's worktree, or this one), packs the first 6
batches of a fixed shuffle of DATASET, compiles their shapes, then prints the median over 3
passes of the seconds per step, as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    checkout, dataset = sys.argv[1], sys.argv[2]
    sys.path.insert(0, checkout)
    import jax
    import numpy as np

    from mqsa_jax.config import build_config
    from mqsa_jax.runs import prepare_data
    from mqsa_jax.train import Trainer

    config = build_config({"dataset": dataset})
    data = prepare_data(config)
    trainer = Trainer(config, data)
    state = trainer.init_state()
    order = np.random.default_rng(0).permutation(data.num_users)
    batches = [trainer.place(b) for b, _ in trainer.packing.batches(order[:256 * 6])]
    for batch in batches:  # compiles each shape
        state, losses = trainer.train_step(state, trainer.arrays, batch)
    jax.block_until_ready(losses)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches:
            state, losses = trainer.train_step(state, trainer.arrays, batch)
        jax.block_until_ready(losses)
        seconds.append((time.perf_counter() - start) / len(batches))
    print(json.dumps({"checkout": checkout, "dataset": dataset,
                      "step_seconds": sorted(seconds)[1], "passes": seconds}))


if __name__ == "__main__":
    main()
