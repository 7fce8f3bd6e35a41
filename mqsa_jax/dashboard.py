"""TensorBoard event files in every run directory, beside ``metrics.jsonl``.

Written with tensorboardX, which needs no TensorFlow; TensorBoard reads them as they are
(``tensorboard --logdir runs/``).  They are a view of ``metrics.jsonl``: a run that resumes
rewrites them from its checkpoint's history, so each epoch appears once however many times the
run was interrupted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams

from mqsa_jax.config import Config

FOLDER = "tensorboard"  # inside the run directory
# metrics.jsonl key -> TensorBoard tag, for the per-epoch numbers other than the metrics.
_TAGS = {"loss": "loss/total", "loss_rec": "loss/rec", "loss_kd": "loss/kd",
         "train_seconds": "seconds/train", "eval_seconds": "seconds/eval",
         "targets_per_second": "throughput/train_targets_per_second"}


def metric_tag(split: str, metric: str) -> str:
    """``valid/NDCG_20`` for NDCG@20 of the valid split (TensorBoard's tags have no ``@``)."""
    return f"{split}/{metric.replace('@', '_')}"


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record: ``loss/total``,
    ``valid/NDCG_20``, ``seconds/train``, ..."""
    values = {tag: float(record[key]) for key, tag in _TAGS.items() if key in record}
    for split in ("valid", "test"):
        values.update({metric_tag(split, name): float(v)
                       for name, v in record.get(split, {}).items()})
    return values


class TensorBoardLog:
    """The event files of one run: the config as hyperparameters, then one step per epoch."""

    def __init__(self, run_dir: Path, config: Config, history: list[dict], selection: str):
        """Starts the files afresh with ``history`` (the epochs a resumed run keeps)."""
        folder = run_dir / FOLDER
        shutil.rmtree(folder, ignore_errors=True)
        self._writer = SummaryWriter(str(folder), flush_secs=30)
        hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                           for k, v in config.flat().items()}
        for summary in hparams(hyperparameters, {metric_tag("valid", selection): 0.0,
                                                 metric_tag("test", selection): 0.0}):
            self._writer.file_writer.add_summary(summary)
        for record in history:
            self.append(record)

    def append(self, record: dict) -> None:
        """Writes one epoch's record, at step = its epoch."""
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, record["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
