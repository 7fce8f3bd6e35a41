"""A run's metrics as the user sees them: :class:`MetricLogger` writes every sink of each record
(the run's metrics file, TensorBoard, the console line), and :class:`ProgressLog` the progress
lines of a log that is not a terminal.

TensorBoard's event files are written with tensorboardX, which needs no TensorFlow;
TensorBoard reads them as they are (``tensorboard --logdir runs/``).  They are a view of the
metrics file: a run that resumes rewrites both from its checkpoint's history, so each epoch
appears once however many times the run was interrupted.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams

from mqsa_jax.config import Config
from mqsa_jax.rundir import RunDir

# metrics record key -> TensorBoard tag, for the per-epoch numbers other than the metrics.
_TAGS = {"loss": "loss/total", "loss_rec": "loss/rec", "loss_kd": "loss/kd",
         "train_seconds": "seconds/train", "eval_seconds": "seconds/eval",
         "targets_per_second": "throughput/train_targets_per_second"}


def metric_tag(split: str, metric: str) -> str:
    """``valid/NDCG_20`` for NDCG@20 of the valid split (TensorBoard's tags have no ``@``)."""
    return f"{split}/{metric.replace('@', '_')}"


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of one metrics record: ``loss/total``,
    ``valid/NDCG_20``, ``seconds/train``, ..."""
    values = {tag: float(record[key]) for key, tag in _TAGS.items() if key in record}
    for split in ("valid", "test"):
        values.update({metric_tag(split, name): float(v)
                       for name, v in record.get(split, {}).items()})
    return values


class TensorBoardLog:
    """The event files of one run: the config as hyperparameters, then one step per epoch."""

    def __init__(self, folder: Path, config: Config, history: list[dict], selection: str):
        """Starts the files in ``folder`` afresh with ``history`` (the epochs a resumed run
        keeps)."""
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
        """Writes one record, at its step in a run that counts steps, else at its epoch."""
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, record.get("step", record["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class MetricLogger:
    """Every sink of a run's metrics, written together: each record goes to the metrics file,
    to TensorBoard and, as one line, to the console.  With many processes only the primary one
    writes; on the others this does nothing."""

    def __init__(self, run_dir: RunDir, config: Config, history: list[dict], primary: bool):
        """Starts the sinks with ``history`` (the records a resumed run keeps: the files drop
        what came after its checkpoint)."""
        self._run_dir, self._primary = run_dir, primary
        self._epochs, self._selection = config.train.epochs, config.eval.selection_metric
        self._board = None
        if primary:
            run_dir.rewrite_metrics(history)
            self._board = TensorBoardLog(run_dir.tensorboard, config, history, self._selection)

    def log(self, record: dict, checkpoint_seconds: float) -> None:
        """One record, saved with a checkpoint that took ``checkpoint_seconds``."""
        if not self._primary:
            return
        self._run_dir.append_metrics(record)
        self._board.append(record)
        print(summary_line(record, self._epochs, checkpoint_seconds, self._selection),
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._board is not None:
            self._board.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ProgressLog:
    """Progress lines for a log that is not a terminal (a scheduler's, nohup's): every
    ``every_seconds`` of an epoch, one line with steps/s, targets/s and the last batch's loss.

    Reading the loss waits for that step: once a line, never once a step.
    """

    def __init__(self, every_seconds: float, epoch: int, epochs: int, batches: int):
        self.every, self.epoch, self.epochs, self.batches = every_seconds, epoch, epochs, batches
        self.start = self.last = time.perf_counter()
        self.first = None  # the epoch's batches done at the first step seen

    def step(self, done: int, targets: int, losses: dict) -> None:
        """After a step: ``done`` batches of the epoch, ``targets`` since this log started."""
        now = time.perf_counter()
        if self.first is None:
            self.first = done - 1
        if not self.every or now - self.last < self.every:
            return
        self.last, seconds = now, now - self.start
        print(f"epoch {self.epoch}/{self.epochs} batch {done}/{self.batches}  "
              f"{(done - self.first) / seconds:.3g} steps/s  {targets / seconds:,.0f} targets/s  "
              f"loss {float(losses['loss']):.4f}", file=sys.stderr, flush=True)


def summary_line(record: dict, epochs: int, checkpoint_seconds: float, selection: str) -> str:
    """The line a run prints after each evaluation or checkpoint."""
    step = f" step {record['step']}" if "step" in record else ""
    line = (f"epoch {record['epoch']}/{epochs}{step}  loss {record['loss']:.4f} "
            f"(rec {record['loss_rec']:.4f}, kd {record['loss_kd']:.4f})  "
            f"{record['train_seconds']:.1f} s, checkpoint {checkpoint_seconds:.2f} s")
    if "valid" in record:
        line += (f"  valid {selection} {record['valid'][selection]:.4f}"
                 f"  test {selection} {record['test'][selection]:.4f}"
                 f"  eval {record['eval_seconds']:.1f} s")
    return line
