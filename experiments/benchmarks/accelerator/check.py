"""The accelerator check: what one device (an H200 when one is lent) does with mqsa-jax.

    python -m experiments.benchmarks.accelerator.check OUT [--dry-run]

Writes ``OUT/accelerator.json`` and ``OUT/accelerator.md`` after every part, so that a command
stopped at its limit keeps the parts it finished:

1. the device;
2. three beauty epochs with float32 N-wide products (the default ``precision``: true float32
   on every backend), the second one and its full valid + test ranking timed (the first one
   compiles);
3. one train step on a 1,000,000-item catalogue, scanned in 65,536-item chunks (memory from
   XLA's analysis of the compiled step);
4. the same three epochs with ``precision=bfloat16`` (bfloat16 operands, float32
   accumulation), timed likewise: the speed and the curve that choosing it gives there.

``--dry-run`` runs the same code small, on whatever device there is (a CPU here): a synthetic
catalogue of 500 items instead of beauty, 5,000 items instead of 1,000,000, two epochs.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import jax
import numpy as np

from experiments.benchmarks.scale_bench import run_case, synthetic_data
from experiments.markdown import table
from mqsa_jax.config import build_config
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.runs import prepare_data
from mqsa_jax.trainer import Trainer


def device_info() -> dict:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "devices": jax.device_count(), "jax": jax.__version__}


def _data(dry_run: bool, config):
    if dry_run:
        return synthetic_data(500, num_users=300)
    return prepare_data(config)


def _train(dry_run: bool, precision: str, epochs: int) -> dict:
    """``epochs`` epochs with the N-wide products in ``precision``, each evaluated, and the
    seconds of the second epoch and of its ranking (the first one compiles)."""
    # A dry run's 300 users fit one batch: few shapes to compile, for a quick test.
    config = build_config({"dataset": "beauty", "precision": precision,
                           **({"batch_size": 512, "eval_batch_size": 512} if dry_run else {})})
    result = {"curve": []}
    trainer = Trainer(config, _data(dry_run, config))
    state = trainer.init_state()
    rng = np.random.default_rng(config.seed)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        state, losses = trainer.train_epoch(state, rng.permutation(trainer.data.num_users))
        jax.block_until_ready(state)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        metrics = trainer.evaluate(state.params)
        eval_s = time.perf_counter() - start
        result["curve"].append({"loss": losses["loss"],
                                "valid_NDCG@20": metrics["valid"]["NDCG@20"]})
        if epoch == 1:
            result["first_epoch_and_ranking_with_compilation_s"] = round(train_s + eval_s, 2)
        if epoch == 2:
            result.update(train_epoch_s=round(train_s, 3),
                          ranking_valid_and_test_s=round(eval_s, 3),
                          train_targets_per_s=round(trainer.data.num_train_targets / train_s))
    return result


def float32_products(dry_run: bool) -> dict:
    """Beauty with float32 N-wide products: its epochs' curve, and the seconds of one epoch
    and of the full ranking."""
    result = _train(dry_run, "float32", 2 if dry_run else 3)
    return {"dataset": "synthetic, 500 items" if dry_run else "beauty", **result}


def bfloat16_products(dry_run: bool) -> dict:
    """The same epochs with bfloat16 operands in the N-wide products."""
    return _train(dry_run, "bfloat16", 2 if dry_run else 3)


def chunked_catalogue(dry_run: bool) -> dict:
    """One train step on a catalogue too large for an unchunked [rows, N] array."""
    items = 5_000 if dry_run else 1_000_000
    return run_case(items, model=1, chunk=1_024 if dry_run else 65_536, steps=3,
                    budget_gb=100.0)


PARTS = {"device": device_info, "float32_products": float32_products,
         "chunked_catalogue": chunked_catalogue, "bfloat16_products": bfloat16_products}


def markdown(report: dict) -> str:
    lines = [f"# Accelerator check ({report['date']}{', dry run' if report['dry_run'] else ''})",
             "", f"Device: `{json.dumps(report.get('device'))}`", ""]
    runs = {p: report[f"{p}_products"] for p in ("float32", "bfloat16")
            if f"{p}_products" in report}
    if runs:
        keys = [k for k in next(iter(runs.values())) if k not in ("curve", "dataset")]
        lines += table(["products", *keys], [[p, *(run.get(k) for k in keys)]
                                             for p, run in runs.items()]) + [""]
    if chunked := report.get("chunked_catalogue"):
        lines += table(["items", "item_block", "step s", "train step peak MB", "compile s"],
                       [[f"{chunked['items']:,}", chunked["item_block"], chunked.get("step_s"),
                         round(chunked["train_step_mb_per_device"]["peak_mb"]),
                         round(chunked["compile_s"], 1)]]) + [""]
    if len(runs) == 2:
        pairs = list(zip(runs["bfloat16"]["curve"], runs["float32"]["curve"]))
        lines += table(["epoch", "bfloat16: loss", "bfloat16: valid NDCG@20", "float32: loss",
                        "float32: valid NDCG@20"],
                       [[e, *(round(r[k], 6) for r in pair for k in ("loss", "valid_NDCG@20"))]
                        for e, pair in enumerate(pairs, 1)])
        last = [r["valid_NDCG@20"] for r in pairs[-1]]
        lines += ["", "Relative difference of the last epoch's valid NDCG@20 (bfloat16 against "
                      f"float32): {(last[0] - last[1]) / last[1]:+.2%}.", ""]
    for part, error in report.get("errors", {}).items():
        lines += [f"{part} failed: `{error}`", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="small, for any machine")
    args = parser.parse_args()
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "dry_run": args.dry_run, "errors": {}}
    for name, part in PARTS.items():
        start = time.perf_counter()
        try:
            report[name] = part() if name == "device" else part(args.dry_run)
        except Exception as e:  # one failed part must not cost the others' figures
            report["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
        write_json_atomic(args.out / "accelerator.json", report)
        write_text_atomic(args.out / "accelerator.md", markdown(report))


if __name__ == "__main__":
    main()
