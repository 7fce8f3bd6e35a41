"""A run directory: the one place that knows its files' names.

    config.json       the resolved config (:mod:`mqsa_jax.config`), written when a run starts
    metrics.jsonl     one record per epoch end or evaluation, appended (:class:`MetricLogger`)
    results.json      the best record's valid and test metrics: the number to report
    provenance.json   reproduction runs: the command and each (re)start's machine; warm
                      starts: the run and checkpoint the first weights came from
    item_ids.npy      the catalogue's source ids, in the item table's row order
    checkpoints/      the latest and best checkpoints (:mod:`mqsa_jax.checkpoint`)
    tensorboard/      a view of metrics.jsonl for TensorBoard (:mod:`mqsa_jax.dashboard`)
    .lock             held by the process that trains the run

It imports nothing of JAX, so that scripts reading results stay light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import platform
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mqsa_jax.errors import UserError
from mqsa_jax.io import atomic_output, read_json_lines, write_json_atomic, write_text_atomic

CONFIG, METRICS, RESULTS, PROVENANCE, ITEM_IDS = ("config.json", "metrics.jsonl", "results.json",
                                                  "provenance.json", "item_ids.npy")


def cpu_model() -> str:
    """This machine's CPU model, as /proc/cpuinfo names it where there is one."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of the run directory ``path``."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    @property
    def provenance_file(self) -> Path:
        return self.path / PROVENANCE

    @property
    def item_ids_file(self) -> Path:
        return self.path / ITEM_IDS

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def holds_run(self) -> bool:
        """Whether a run was started here (its config is written first)."""
        return self.config_file.exists()

    def write_config(self, values: dict) -> None:
        write_json_atomic(self.config_file, values)

    def metrics(self) -> list[dict]:
        """The metrics records, without a last line still being written."""
        return read_json_lines(self.metrics_file)

    def rewrite_metrics(self, records: list[dict]) -> None:
        """``metrics.jsonl`` made of ``records`` alone (a resumed run drops what came after its
        checkpoint)."""
        write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_item_ids(self, item_ids: np.ndarray) -> None:
        with atomic_output(self.item_ids_file) as f:
            np.save(f, np.asarray(item_ids, dtype=str), allow_pickle=False)

    def item_ids(self) -> np.ndarray | None:
        """[N] the source ids of the items the run trained on (None: a run from before they
        were recorded)."""
        if not self.item_ids_file.exists():
            return None
        return np.load(self.item_ids_file, allow_pickle=False)

    def record_provenance(self, key: str, value: object) -> None:
        """Sets ``key`` of the provenance file, keeping what else it holds."""
        path = self.provenance_file
        record = json.loads(path.read_text()) if path.exists() else {}
        write_json_atomic(path, {**record, key: value})

    def results(self) -> dict:
        return json.loads(self.results_file.read_text())

    def write_results(self, results: dict) -> None:
        write_json_atomic(self.results_file, results)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds the run's lock: two processes training one run would corrupt it."""
        with open(self.path / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path}: another process is training this run") from None
            yield
