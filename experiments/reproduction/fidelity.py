"""Compares a beauty run's validation NDCG@20 per epoch with the release's curve.

    python -m experiments.reproduction.fidelity RUN_DIR [--out experiments/results/fidelity_beauty]

The acceptance rule (issue 3): from epoch 5 on, ours is not lower than the release's by more
than 5 percent (relative).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from experiments.markdown import table
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.rundir import RunDir

OFFICIAL = (Path(__file__).resolve().parents[1] / "reference"
            / "official-beauty-curve.csv")
METRIC = "NDCG@20"
TOLERANCE = 0.05
FROM_EPOCH = 5


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", default="experiments/results/fidelity_beauty")
    args = parser.parse_args()
    report = compare(args.run_dir)
    write_json_atomic(Path(f"{args.out}.json"), report)
    lines = table(["epoch", "release valid NDCG@20", "ours", "relative",
                   "release loss (total, rec, kd)", "ours", "release train s", "ours train s"],
                  [[r["epoch"], r["release_valid"], r["ours_valid"], f"{r['relative']:+.1%}",
                    r["release_loss"], r["ours_loss"], r["release_train_seconds"],
                    r["ours_train_seconds"]] for r in report["epochs"]])
    verdict = "holds" if report["passes"] else "does NOT hold"
    lines += ["", f"Rule (not lower than the release by more than {TOLERANCE:.0%} from epoch "
                  f"{FROM_EPOCH} on): {verdict}."]
    write_text_atomic(Path(f"{args.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
