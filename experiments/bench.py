"""Training and evaluation speed per dataset, with a measured breakdown of the train step.

    python experiments/bench.py [--datasets beauty toys] [--out experiments/results/bench]

For each dataset, with the reference hyperparameters: one warm-up epoch (compiles the step's
shapes), then one timed epoch of training and one full evaluation (valid + test, all users, all
items).  Reported: seconds, training targets per second, and the N-wide matmuls' achieved
GFLOP/s against the machine's measured f32 matmul peak.  The breakdown times each part of one
representative step in isolation (jit-compiled, median of repeats): the N-wide loss (matmuls plus
softmax passes), the matmuls alone, the encoder's forward and backward, and the rest.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mqsa_jax.checkpoint import RunCheckpoints
from mqsa_jax.config import Config
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.losses import fused_losses
from mqsa_jax.train import Trainer, epoch_batches, prepare_data, split_rows

from measure import machine_line, median_seconds, median_step_seconds  # experiments/measure.py

RELEASE_BEAUTY_SECONDS = {"train": 225.0, "eval": 115.0}  # issue 3 / official-beauty-curve.csv


def matmul_peak_gflops(size: int = 2048) -> float:
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = median_seconds(lambda: matmul(a, a))
    return 2 * size**3 / seconds / 1e9


def nwide_flops(rows: int, hidden: int, num_items: int) -> float:
    """Forward logits plus the two backward products: 3 matmuls of rows x hidden x N."""
    return 3 * 2 * rows * hidden * num_items


def step_breakdown(trainer: Trainer, state, users, long_rows, capacity) -> dict:
    config, data = trainer.config, trainer.data
    d, n = config.hidden, data.num_items
    rows = 2 * capacity if config.lambda_kd > 0 else capacity
    step = lambda s: trainer.train_step(s, trainer.arrays, users, capacity, long_rows,
                                        trainer.short_width)
    # The step donates its state: time it on a copy, which the caller's state outlives.
    step_s, _, _ = median_step_seconds(step, jax.tree.map(jnp.copy, state))

    table = state.params["params"]["item_embedding"]
    key = jax.random.key(0)
    states = jax.random.normal(key, (capacity, d)) * 0.1
    heads = jax.random.randint(key, (capacity,), 0, n)
    teacher_rows = trainer.arrays.teacher.rows(heads)
    distill = config.lambda_kd > 0
    students = (table[heads] * np.sqrt(d) / config.tau) if distill else None

    def nwide(states, students, table, heads, teacher_rows):
        rec, kd = fused_losses(states, heads, jnp.ones(capacity), table, students,
                               teacher_rows if distill else None)
        return rec + kd

    # Every input is an argument, so that nothing is constant-folded at compile time.
    nwide_grad = jax.jit(jax.grad(nwide, argnums=(0, 1, 2) if distill else (0, 2)))
    nwide_s = median_seconds(lambda: nwide_grad(states, students, table, heads, teacher_rows))
    x = jax.random.normal(key, (rows, d))
    g = jax.random.normal(key, (rows, n))
    matmuls = jax.jit(lambda x, g, e: (x @ e.T, g @ e, g.T @ x))
    matmul_s = median_seconds(lambda: matmuls(x, g, table))

    groups = split_rows(trainer.arrays.inputs[users], long_rows, trainer.short_width)

    def encoder(params):
        return sum(jnp.sum(trainer.model.apply(params, x, deterministic=False,
                                               rngs={"dropout": key}) ** 2) for x in groups)

    encoder_grad = jax.jit(jax.grad(encoder))
    encoder_s = median_seconds(lambda: encoder_grad(state.params))
    flops = nwide_flops(rows, d, n)
    return {
        "capacity": capacity, "long_rows": long_rows, "short_width": trainer.short_width,
        "step_ms": round(step_s * 1e3, 1),
        "nwide_loss_ms": round(nwide_s * 1e3, 1),
        "nwide_matmuls_ms": round(matmul_s * 1e3, 1),
        "nwide_softmax_passes_ms": round((nwide_s - matmul_s) * 1e3, 1),
        "encoder_fwd_bwd_ms": round(encoder_s * 1e3, 1),
        "rest_ms": round((step_s - nwide_s - encoder_s) * 1e3, 1),
        "nwide_matmul_gflops": round(flops / matmul_s / 1e9, 1),
    }


def bench_dataset(name: str, peak: float) -> dict:
    config = Config(dataset=name)
    start = time.perf_counter()
    trainer = Trainer(config, prepare_data(config))
    setup_s = time.perf_counter() - start
    state = trainer.init_state()
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    state, _ = trainer.train_epoch(state, rng.permutation(trainer.data.num_users))
    trainer.evaluate(state.params)
    warmup_s = time.perf_counter() - start

    # Batch shapes vary with the shuffle (packed-row capacity, long rows); each new shape
    # compiles once per run (and is then cached on disk).  Steady state is what 200 epochs
    # see, so the timed epoch's shapes are compiled first, on a throwaway copy of the state.
    order = rng.permutation(trainer.data.num_users)
    trainer.train_epoch(jax.tree.map(jnp.copy, state), order)
    start = time.perf_counter()
    state, _ = trainer.train_epoch(state, order)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.evaluate(state.params)
    eval_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp, RunCheckpoints(Path(tmp)) as checkpoints:
        start = time.perf_counter()
        checkpoints.save(1, state, {"epoch": 1}, is_best=True)  # latest and best: two saves
        checkpoint_s = time.perf_counter() - start

    batches = list(epoch_batches(order, config.batch_size, trainer.targets_per_user,
                                 trainer.short_width))
    targets = sum(count for *_, count in batches)
    rows_factor = 2 if config.lambda_kd > 0 else 1
    flops = sum(nwide_flops(rows_factor * capacity, config.hidden, trainer.data.num_items)
                for _, _, capacity, _ in batches)
    median_batch = sorted(batches, key=lambda b: b[2])[len(batches) // 2]
    breakdown = step_breakdown(trainer, state, *median_batch[:3])
    result = {
        "setup_seconds": round(setup_s, 2),
        "first_epoch_and_eval_with_compilation_seconds": round(warmup_s, 1),
        "train_seconds_per_epoch": round(train_s, 2),
        "eval_seconds_valid_and_test": round(eval_s, 2),
        "train_targets_per_second": round(targets / train_s),
        "checkpoint_save_seconds_latest_and_best": round(checkpoint_s, 3),
        "nwide_tflop_per_epoch": round(flops / 1e12, 3),
        "step_breakdown": breakdown,
        "nwide_matmul_fraction_of_peak": round(breakdown["nwide_matmul_gflops"] / peak, 3),
    }
    if name == "beauty":
        release = RELEASE_BEAUTY_SECONDS["train"] + RELEASE_BEAUTY_SECONDS["eval"]
        result["speedup_vs_release_epoch_plus_eval"] = round(release / (train_s + eval_s), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["beauty", "sports", "toys", "yelp"])
    parser.add_argument("--out", default="experiments/results/bench")
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    report = {
        "command": "python experiments/bench.py --datasets " + " ".join(args.datasets),
        "machine": f"{machine_line()}, backend {jax.devices()[0].platform}",
        "date": time.strftime("%Y-%m-%d"),
        "matmul_peak_gflops_f32_2048": round(peak, 1),
        "datasets": {},
    }
    for name in args.datasets:
        report["datasets"][name] = bench_dataset(name, peak)
        print(name, json.dumps(report["datasets"][name]), flush=True)
        write_json_atomic(Path(f"{args.out}.json"), report)  # partial results
    write_text_atomic(Path(f"{args.out}.md"), markdown_table(report))


def markdown_table(report: dict) -> str:
    lines = [
        f"# Speed ({report['date']}; {report['machine']})", "",
        f"Command: `{report['command']}`. Machine f32 matmul peak (2048^3): "
        f"{report['matmul_peak_gflops_f32_2048']} GFLOP/s.", "",
        "| dataset | train s/epoch | eval s (valid+test) | targets/s | N-wide GFLOP/s (share of peak) "
        "| step ms: N-wide matmuls / softmax passes / encoder / rest |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["datasets"].items():
        b = r["step_breakdown"]
        lines.append(
            f"| {name} | {r['train_seconds_per_epoch']} | {r['eval_seconds_valid_and_test']} | "
            f"{r['train_targets_per_second']:,} | {b['nwide_matmul_gflops']} "
            f"({r['nwide_matmul_fraction_of_peak']:.0%}) | {b['step_ms']}: "
            f"{b['nwide_matmuls_ms']} / {b['nwide_softmax_passes_ms']} / "
            f"{b['encoder_fwd_bwd_ms']} / {b['rest_ms']} |")
    lines += ["", "The step's parts are timed in isolation on the median batch; inside the whole step "
                  "XLA fuses across them, so `rest` (the step minus the parts: gathers, L2, Adam) "
                  "can come out slightly negative.  `softmax passes` are the elementwise work of "
                  "the N-wide loss (exp, log(p + 1e-24), the gathers at observed successors and "
                  "their scatter in the backward pass) beside its three matmuls."]
    beauty = report["datasets"].get("beauty", {})
    if "speedup_vs_release_epoch_plus_eval" in beauty:
        lines += ["", f"Beauty, one epoch plus full evaluation, against the release's 225 s + 115 s "
                      f"on this machine kind: {beauty['speedup_vs_release_epoch_plus_eval']}x."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
