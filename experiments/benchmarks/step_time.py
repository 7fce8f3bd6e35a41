"""Train- and evaluation-step seconds without compilation, for comparing two checkouts in one
sitting.

    python -m experiments.benchmarks.step_time CHECKOUT DATASET [DATA_DIR]

Imports ``mqsa_jax`` from CHECKOUT (another commit's worktree, or this one), packs the first 6
batches of a fixed shuffle of DATASET, compiles their shapes, then times 3 passes over them; the
same for 6 validation ranking steps of that shuffle's first users (``eval_batch_size`` each).
Prints the medians, seconds per step, as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _median_seconds(run, steps: int) -> tuple[float, list[float]]:
    """Runs ``run()`` once to compile, then 3 times timed: the median seconds per step."""
    import jax

    jax.block_until_ready(run())
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run())
        seconds.append((time.perf_counter() - start) / steps)
    return sorted(seconds)[1], seconds


def main() -> None:
    checkout, dataset = sys.argv[1], sys.argv[2]
    data_dir = sys.argv[3] if len(sys.argv) > 3 else None
    sys.path.insert(0, checkout)
    import numpy as np

    from mqsa_jax.config import build_config
    from mqsa_jax.evaluation import RankingEvaluator
    from mqsa_jax.runs import prepare_data
    from mqsa_jax.trainer import Trainer

    config = build_config({"dataset": dataset})
    data = prepare_data(config, data_dir and Path(data_dir))
    trainer = Trainer(config, data)
    state = trainer.init_state()
    order = np.random.default_rng(0).permutation(data.num_users)
    batches = [trainer.place(b) for b, _ in trainer.packing.batches(order[:256 * 6])]

    def train():
        nonlocal state
        for batch in batches:
            state, losses = trainer.train_step(state, trainer.arrays, batch)
        return losses

    step, passes = _median_seconds(train, len(batches))
    size = config.eval.eval_batch_size
    evaluator = RankingEvaluator("valid", data, trainer.model.encode_last, size,
                                 users=order[:size * 6])
    eval_step, eval_passes = _median_seconds(lambda: evaluator.evaluate(state.params), 6)
    print(json.dumps({"checkout": checkout, "dataset": dataset, "step_seconds": step,
                      "passes": passes, "eval_step_seconds": eval_step,
                      "eval_passes": eval_passes, "eval_users_per_step": size,
                      "num_items": data.num_items}))


if __name__ == "__main__":
    main()
