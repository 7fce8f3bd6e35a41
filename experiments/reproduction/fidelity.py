"""Compares a beauty run's validation NDCG@20 per epoch with the release's curve.

    python -m experiments.reproduction.fidelity RUN_DIR [--out experiments/results/fidelity_beauty]
        [--against-float32]

The acceptance rule (issue 3): from epoch 5 on, ours is not lower than the release's by more
than 5 percent (relative).  With ``--against-float32`` (a run in another ``precision``, issue
44), also: its test HR@5, NDCG@5 and NDCG@20 (the epoch chosen on validation) within 1.5% of
the float32 runs' three-seed mean (``results/summary.json``, beauty MQSA-TED).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from experiments.markdown import table
from mqsa_jax.config import read_run_config
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.rundir import RunDir

OFFICIAL = (Path(__file__).resolve().parents[1] / "reference"
            / "official-beauty-curve.csv")
SUMMARY = Path(__file__).resolve().parents[1] / "results" / "summary.json"
METRIC = "NDCG@20"
TOLERANCE = 0.05
FROM_EPOCH = 5
FLOAT32_TOLERANCE = 0.015
FLOAT32_METRICS = ("HR@5", "NDCG@5", "NDCG@20")


def compare(run_dir: Path) -> dict:
    with open(OFFICIAL) as f:
        official = {int(row["epoch"]): row for row in csv.DictReader(f)}
    ours = {r["epoch"]: r for r in RunDir(run_dir).metrics()}
    rows = []
    for epoch in sorted(set(official) & set(ours)):
        release, mine = float(official[epoch][f"valid_{METRIC}"]), ours[epoch]["valid"][METRIC]
        rows.append({
            "epoch": epoch,
            "release_valid": release, "ours_valid": round(mine, 4),
            "relative": round(mine / release - 1, 4),
            "release_loss": [float(official[epoch][k]) for k in ("loss", "loss_rec", "loss_kd")],
            "ours_loss": [round(ours[epoch][k], 4) for k in ("loss", "loss_rec", "loss_kd")],
            "release_train_seconds": float(official[epoch]["train_seconds"]),
            "ours_train_seconds": ours[epoch]["train_seconds"],
        })
    checked = [r for r in rows if r["epoch"] >= FROM_EPOCH]
    return {"run_dir": str(run_dir), "metric": f"valid {METRIC}", "epochs": rows,
            "passes": bool(checked) and all(r["relative"] >= -TOLERANCE for r in checked)}


def against_float32(run_dir: Path) -> dict:
    """The run's test metrics against the float32 three-seed means of beauty MQSA-TED."""
    reference = json.loads(SUMMARY.read_text())["beauty"]["mqsa_ted"]
    results, config = RunDir(run_dir).results(), read_run_config(run_dir)
    rows = [{"metric": metric, "float32_mean": round(reference["test"][metric]["mean"], 5),
             "float32_std": round(reference["test"][metric]["std"], 5),
             "float32_same_seed": round(
                 reference["test_by_seed"].get(str(config.seed), {}).get(metric, float("nan")), 5),
             "ours": round(results["test"][metric], 5),
             "relative": round(results["test"][metric] / reference["test"][metric]["mean"] - 1, 4)}
            for metric in FLOAT32_METRICS]
    return {"precision": config.loss.precision, "seed": config.seed,
            "best_epoch": results["best_epoch"], "float32_seeds": reference["seeds"],
            "metrics": rows,
            "passes": all(abs(r["relative"]) <= FLOAT32_TOLERANCE for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", default="experiments/results/fidelity_beauty")
    parser.add_argument("--against-float32", action="store_true")
    args = parser.parse_args()
    report = compare(args.run_dir)
    if args.against_float32:
        report["against_float32"] = against_float32(args.run_dir)
    write_json_atomic(Path(f"{args.out}.json"), report)
    lines = table(["epoch", "release valid NDCG@20", "ours", "relative",
                   "release loss (total, rec, kd)", "ours", "release train s", "ours train s"],
                  [[r["epoch"], r["release_valid"], r["ours_valid"], f"{r['relative']:+.1%}",
                    r["release_loss"], r["ours_loss"], r["release_train_seconds"],
                    r["ours_train_seconds"]] for r in report["epochs"]])
    verdict = "holds" if report["passes"] else "does NOT hold"
    lines += ["", f"Rule (not lower than the release by more than {TOLERANCE:.0%} from epoch "
                  f"{FROM_EPOCH} on): {verdict}."]
    if args.against_float32:
        check = report["against_float32"]
        lines += ["", f"The run ({check['precision']}, seed {check['seed']}, test at its best "
                      f"valid epoch {check['best_epoch']}) against the float32 runs' mean "
                      f"(seeds {', '.join(map(str, check['float32_seeds']))}):", "",
                  *table(["test metric", "float32 mean (std)", f"float32 seed {check['seed']}",
                          "this run", "relative to the mean"],
                         [[r["metric"], f"{r['float32_mean']} ({r['float32_std']})",
                           r["float32_same_seed"], r["ours"], f"{r['relative']:+.2%}"]
                          for r in check["metrics"]]),
                  "", f"Rule (within {FLOAT32_TOLERANCE:.1%} of the float32 mean on each): "
                      f"{'holds' if check['passes'] else 'does NOT hold'}."]
    write_text_atomic(Path(f"{args.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
