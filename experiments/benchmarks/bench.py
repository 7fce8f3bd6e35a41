"""Training and evaluation speed per dataset against the authors' release, measured together.

    python -m experiments.benchmarks.bench [--datasets beauty yelp]
        [--precisions float32 bfloat16] [--out experiments/results/bench]
        [--release ../shared/tools/release-bench/run.sh | --no-release]

For each dataset and each precision of the N-wide products (``precision``), with the
reference hyperparameters: one warm-up epoch (compiles the step's
shapes), then one timed epoch of training and one full evaluation (valid + test, all users, all
items).  Then, in the same sitting and alone on the machine, the unchanged release trains and
evaluates one epoch of the same dataset (``release-bench/run.sh DATASET 1``, which prints its own
seconds), and the ratio of each precision's total to the release's is reported.  No figure
from elsewhere enters a ratio.

Also reported: training targets per second, the compile time (the first epoch's extra seconds),
the train step's shapes compiled (``mqsa_jax.step_shapes``), and the N-wide products' achieved
GFLOP/s against the machine's measured matmul peak in the same precision.  The
breakdown times each part of one representative step in isolation (jit-compiled, median of
repeats): the N-wide loss, its products alone, the encoder's forward and backward, and the rest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.markdown import table
from experiments.measure import machine_line, median_seconds, median_step_seconds
from mqsa_jax import blocked
from mqsa_jax.checkpoint import RunCheckpoints
from mqsa_jax.config import PRECISIONS, build_config
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.item_blocks import backward_products, materialized_transpose, scan_blocks
from mqsa_jax.losses import fused_losses
from mqsa_jax.model import item_table
from mqsa_jax.packing import Batch
from mqsa_jax.runs import prepare_data
from mqsa_jax.tables import lookup_rows
from mqsa_jax.teacher import ted_students
from mqsa_jax.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
RELEASE_BENCH = REPO.parent / "shared" / "tools" / "release-bench" / "run.sh"


def release_epoch(script: Path, dataset: str) -> dict:
    """The release's first epoch on ``dataset``, timed by ``release-bench`` on this machine."""
    done = subprocess.run([str(script), dataset, "1"], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        sys.exit(f"{script} {dataset} 1 failed (exit {done.returncode}): "
                 f"{done.stderr.strip().splitlines()[-1:] or 'no output'}")
    epoch = json.loads(lines[0])
    return {"train_seconds": epoch["train_s"], "eval_seconds": epoch["eval_s"],
            "total_seconds": round(epoch["train_s"] + epoch["eval_s"], 2),
            "loss": epoch["loss"], "valid_NDCG@20": epoch["valid"]["NDCG@20"]}


def matmul_peak_gflops(precision: str, size: int = 2048) -> float:
    """A square product's GFLOP/s, operands in ``precision``, accumulated in float32."""
    a = jnp.ones((size, size), precision)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    seconds = median_seconds(lambda: matmul(a, a))
    return 2 * size**3 / seconds / 1e9


def nwide_flops(rows: int, hidden: int, num_items: int) -> float:
    """The blocked loss's products: the forward logits, their recomputation in the backward
    pass, and the two gradient products: 4 matmuls of rows x hidden x N."""
    return 4 * 2 * rows * hidden * num_items


def blocked_products(rows: jax.Array, table: jax.Array, block: int,
                     precision: str) -> jax.Array:
    """The four products of the blocked loss alone, without the exp passes: the library's own
    scan, blocks and products (:mod:`mqsa_jax.item_blocks`), in ``precision``; the last
    block's rows that the one before holds are multiplied again, as in the loss.  The sums
    this returns are there only so that nothing is optimised away."""
    operands = rows.astype(precision)
    rows_t = materialized_transpose(operands)

    def forward(total, items):
        return total + items.logits(operands).sum(axis=(1, 2)), None

    def backward(d_rows, items):
        d_items_rows, d_block = backward_products(rows_t, items.logits(operands), items)
        return d_rows + d_items_rows, d_block

    valid = len(table)
    total, _, _ = scan_blocks(forward, jnp.zeros(len(rows)), table, block, 1, valid, precision)
    d_rows, d_blocks, _ = scan_blocks(backward, jnp.zeros(rows.shape, jnp.float32), table,
                                      block, 1, valid, precision)
    return total.sum() + d_rows.sum() + d_blocks.sum()


def step_breakdown(trainer: Trainer, state, batch: Batch) -> dict:
    config, data = trainer.config, trainer.data
    d, n, capacity = config.model.hidden, data.num_items, batch.capacity
    rows = 2 * capacity if config.loss.lambda_kd > 0 else capacity
    def step(s):
        return trainer.train_step(s, trainer.arrays, batch)
    # The step donates its state: time it on a copy, which the caller's state outlives.
    step_s, _, _ = median_step_seconds(step, jax.tree.map(jnp.copy, state))

    # The N-wide loss alone, on this batch's real positions (their states, targets and input
    # items, so that the teacher pairs and the clamp are those of the step), padded as the
    # step pads them.
    table = item_table(state.params)
    key = jax.random.key(0)
    packed = dict(segments=batch.segments, positions=batch.positions)
    positions = np.flatnonzero(np.asarray(batch.segments).ravel() > 0)
    pad = capacity - len(positions)
    weights = jnp.asarray(np.pad(np.ones(len(positions), np.float32), (0, pad)))
    targets = jnp.asarray(np.pad(np.asarray(batch.targets).ravel()[positions], (0, pad),
                                 constant_values=n))
    heads = jnp.asarray(np.pad(np.asarray(batch.items).ravel()[positions], (0, pad),
                               constant_values=n))
    states = trainer.model.apply(state.params, batch.items, deterministic=True, **packed)
    states = jnp.pad(states.reshape(-1, d)[positions], ((0, pad), (0, 0)))
    distill = config.loss.lambda_kd > 0
    teacher = trainer.arrays.teacher.rows(heads, weights) if distill else None
    students = (ted_students(lookup_rows(table, heads, n), key, config.model.dropout,
                             config.loss.tau)
                if distill else None)

    def nwide(states, students, table, targets, teacher):
        rec, kd = fused_losses(states, targets, weights, table, students, teacher,
                               config.loss.item_block, config.loss.precision)
        return rec + kd

    # Every input is an argument, so that nothing is constant-folded at compile time.
    nwide_grad = jax.jit(jax.grad(nwide, argnums=(0, 1, 2) if distill else (0, 2)))
    nwide_s = median_seconds(lambda: nwide_grad(states, students, table, targets, teacher))
    x = jax.random.normal(key, (rows, d))
    products = jax.jit(blocked_products, static_argnums=(2, 3))
    matmul_s = median_seconds(lambda: products(x, table, config.loss.item_block
                                               or blocked.DEFAULT_BLOCK, config.loss.precision))

    def encoder(params):
        return jnp.sum(trainer.model.apply(params, batch.items, deterministic=False,
                                           rngs={"dropout": key}, **packed) ** 2)

    encoder_grad = jax.jit(jax.grad(encoder))
    encoder_s = median_seconds(lambda: encoder_grad(state.params))
    flops = nwide_flops(rows, d, n)
    return {
        "capacity": capacity, "packed_rows": batch.items.shape[0],
        "step_ms": round(step_s * 1e3, 1),
        "nwide_loss_ms": round(nwide_s * 1e3, 1),
        "nwide_matmuls_ms": round(matmul_s * 1e3, 1),
        "nwide_softmax_passes_ms": round((nwide_s - matmul_s) * 1e3, 1),
        "encoder_fwd_bwd_ms": round(encoder_s * 1e3, 1),
        "rest_ms": round((step_s - nwide_s - encoder_s) * 1e3, 1),
        "nwide_matmul_gflops": round(flops / matmul_s / 1e9, 1),
    }


def bench_dataset(name: str, precision: str, peak: float, warmup_epochs: int) -> dict:
    # From a cold cache: nothing compiled for an earlier dataset or precision is reused (and
    # the persistent cache is not enabled here).
    jax.clear_caches()
    config = build_config({"dataset": name, "precision": precision})
    start = time.perf_counter()
    trainer = Trainer(config, prepare_data(config))
    setup_s = time.perf_counter() - start
    state = trainer.init_state()
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    state, _ = trainer.train_epoch(state, rng.permutation(trainer.data.num_users))
    trainer.evaluate(state.params)
    warmup_s = time.perf_counter() - start
    first_shapes = len(trainer.shapes.compiled)
    for _ in range(warmup_epochs - 1):  # to the epochs where TED's clamp is active
        state, _ = trainer.train_epoch(state, rng.permutation(trainer.data.num_users))

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

    batches = list(trainer.packing.batches(order))
    targets = sum(count for _, count in batches)
    rows_factor = 2 if config.loss.lambda_kd > 0 else 1
    flops = sum(nwide_flops(rows_factor * batch.capacity, config.model.hidden,
                            trainer.data.num_items) for batch, _ in batches)
    median_batch = sorted(batches, key=lambda b: b[0].capacity)[len(batches) // 2][0]
    breakdown = step_breakdown(trainer, state, median_batch)
    result = {
        "setup_seconds": round(setup_s, 2),
        "first_epoch_and_eval_with_compilation_seconds": round(warmup_s, 1),
        # Train step shapes compiled (mqsa_jax.step_shapes): in the first epoch, by the timed one.
        "step_shapes_compiled": {"first_epoch": first_shapes,
                                 "timed_epoch": len(trainer.shapes.compiled)},
        "train_seconds_per_epoch": round(train_s, 2),
        "eval_seconds_valid_and_test": round(eval_s, 2),
        "train_targets_per_second": round(targets / train_s),
        "checkpoint_save_seconds_latest_and_best": round(checkpoint_s, 3),
        "nwide_tflop_per_epoch": round(flops / 1e12, 3),
        "step_breakdown": breakdown,
        "nwide_matmul_fraction_of_peak": round(breakdown["nwide_matmul_gflops"] / peak, 3),
    }
    result["total_seconds"] = round(train_s + eval_s, 2)
    result["compile_seconds"] = round(warmup_s - train_s - eval_s, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["beauty", "yelp"])
    parser.add_argument("--warmup-epochs", type=int, default=3,
                        help="epochs trained before the timed one: the release's clamp inside "
                             "TED's log starts to matter in the second or third epoch, and "
                             "from then on every step pays for it")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=PRECISIONS, help="the N-wide products' operand dtypes to time")
    parser.add_argument("--out", default="experiments/results/bench")
    parser.add_argument("--release", type=Path, default=RELEASE_BENCH,
                        help="release-bench's run.sh, which times the authors' release")
    parser.add_argument("--no-release", action="store_true",
                        help="time this project only (no ratio is reported)")
    args = parser.parse_args()
    if not args.no_release and not args.release.is_file():
        sys.exit(f"{args.release}: release-bench not found; pass --release PATH or --no-release")
    peaks = {precision: matmul_peak_gflops(precision) for precision in args.precisions}
    report = {
        "command": "python -m experiments.benchmarks.bench " + " ".join(sys.argv[1:]),
        "machine": f"{machine_line()}, backend {jax.devices()[0].platform}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "matmul_peak_gflops_2048": {p: round(peak, 1) for p, peak in peaks.items()},
        "datasets": {},
    }
    for name in args.datasets:
        ours = {precision: bench_dataset(name, precision, peaks[precision], args.warmup_epochs)
                for precision in args.precisions}
        report["datasets"][name] = entry = {"mqsa_jax": ours}
        if not args.no_release:
            # Timed alone, after this project's figures: nothing else runs meanwhile.
            entry["release"] = release = release_epoch(args.release, name)
            entry["speedup"] = {precision: round(release["total_seconds"]
                                                 / result["total_seconds"], 1)
                                for precision, result in ours.items()}
        print(name, json.dumps(entry), flush=True)
        write_json_atomic(Path(f"{args.out}.json"), report)  # partial results
    write_text_atomic(Path(f"{args.out}.md"), markdown_table(report))
    print(markdown_table(report))


def markdown_table(report: dict) -> str:
    lines = [
        f"# Speed ({report['date']}; {report['machine']})", "",
        f"Command: `{report['command']}`. Machine matmul peak (2048^3, float32 accumulation): "
        + ", ".join(f"{p} operands {g} GFLOP/s"
                    for p, g in report["matmul_peak_gflops_2048"].items()) + ".", "",
        "One epoch: training, then the full validation and test ranking (all users, all items). "
        "The release's seconds come from `release-bench/run.sh DATASET 1`, run right after ours "
        "on the same machine; the speedup divides the two totals.", "",
    ]
    rows, parts = [], []
    for name, entry in report["datasets"].items():
        release = entry.get("release")
        theirs = (f"{release['total_seconds']} ({release['train_seconds']} + "
                  f"{release['eval_seconds']})" if release else "not run")
        for precision, r in entry["mqsa_jax"].items():
            rows.append([name, precision, theirs,
                         f"{r['total_seconds']} ({r['train_seconds_per_epoch']} + "
                         f"{r['eval_seconds_valid_and_test']})",
                         f"**{entry['speedup'][precision]}x**" if release else "–",
                         f"{r['train_targets_per_second']:,}", r["compile_seconds"],
                         "{first_epoch} / {timed_epoch}".format(**r["step_shapes_compiled"])])
            b = r["step_breakdown"]
            parts.append([name, precision, b["step_ms"],
                          f"{b['nwide_loss_ms']}: {b['nwide_matmuls_ms']} / "
                          f"{b['nwide_softmax_passes_ms']}", b["encoder_fwd_bwd_ms"],
                          b["rest_ms"], f"{b['nwide_matmul_gflops']} "
                          f"({r['nwide_matmul_fraction_of_peak']:.0%})"])
    lines += table(["dataset", "precision", "release s (train + eval)",
                    "mqsa-jax s (train + eval)", "speedup", "targets/s", "compile s",
                    "step shapes"], rows)
    lines += ["", *table(["dataset", "precision", "step ms",
                          "N-wide loss ms: products / elementwise",
                          "encoder ms", "rest ms", "N-wide products GFLOP/s (share of peak)"],
                         parts)]
    lines += ["", "The step's parts are timed in isolation on the epoch's median batch; inside the "
                  "whole step XLA fuses across them, so `rest` (the step minus the parts: gathers, "
                  "L2, Adam) can come out slightly negative.  `products` are the blocked loss's "
                  "four rows x d x N products alone (forward logits, their recomputation, the two "
                  "gradients); `elementwise` the rest of the N-wide loss (exp, the clamp's "
                  "correction, the teacher pairs).  `compile s`: the first epoch's extra seconds "
                  "(its compilations, and the padding its batches ran on larger compiled shapes: "
                  "`mqsa_jax/step_shapes.py`).  `step shapes`: the train step's shapes compiled "
                  "in the first epoch / by the timed one."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
