"""Orbax checkpoints of a training run: the latest two epochs, and the best one.

A checkpoint holds everything a resumed run needs, so that it ends exactly as an uninterrupted
one: the train state (parameters, optimizer state, step, dropout key) and, as JSON, the epoch,
the data-order generator's state, the metrics history, the best-so-far record and the resolved
config.  Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a process killed during a save leaves the previous checkpoint intact, and only complete ones
are listed.

A checkpoint is restored into the shapes of its template, which may differ from the saved ones
in rows only: the item table is padded with zero rows to the mesh that trains it
(:mod:`mqsa_jax.tables`), so a run moves between meshes by appending or dropping zero rows.

Each complete checkpoint also gets ``checksums.json``, the SHA-256 of each of its files, and a
checkpoint is verified against it before it is read: a damaged file (a bad disk, a truncated
copy) is named instead of being read as garbage.  ``train --resume`` then falls back to the
older of the two latest checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mqsa_jax.errors import UserError
from mqsa_jax.io import file_sha256, write_json_atomic
from mqsa_jax.quiet import logger_level
from mqsa_jax.rundir import RunDir

LATEST, BEST = "latest", "best"
CHECKSUMS = "checksums.json"


def _tensorstore_reason(message: str) -> str:
    """The system's words for a failed TensorStore write: its message ends in the OS error
    code, after annotations (the whole JSON spec of the array, at times) no user should read."""
    code = re.search(r"os_error_code='?(\d+)", message)
    return os.strerror(int(code[1])) if code else message.rsplit(": ", 1)[-1]


def _manager(directory: Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,  # leftovers of a save that was killed
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a latest checkpoint to resume from.  Checkpoints are not
    committed with a run's results: a run whose machine is gone has none and starts again from
    epoch 1."""
    return any((RunDir(run_dir).checkpoints / LATEST).glob("[0-9]*"))


class RunCheckpoints:
    """The ``checkpoints/latest`` and ``checkpoints/best`` managers of one run directory."""

    def __init__(self, run_dir: Path, read_only: bool = False):
        root = RunDir(run_dir).checkpoints
        if read_only and not root.is_dir():
            raise UserError(f"{run_dir}: no checkpoints (not a training run directory?)")
        self._managers = {LATEST: _manager(root / LATEST, 2, read_only),
                          BEST: _manager(root / BEST, 1, read_only)}

    def save(self, epoch: int, state: Any, progress: dict, is_best: bool) -> None:
        """Saves ``epoch`` as the latest checkpoint (and as the best one), each complete with
        its checksums when this returns.  A failed write (a full disk) leaves the previous
        checkpoints as they were and ends in a :class:`UserError`."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  progress=ocp.args.JsonSave(progress))
        for name in (LATEST, BEST) if is_best else (LATEST,):
            manager = self._managers[name]
            try:
                if epoch in manager.all_steps():
                    # A resume that fell back past a damaged checkpoint trains this epoch again.
                    manager.delete(epoch)
                with _quiet_orbax():
                    manager.save(epoch, args=args, force=True)
                    manager.wait_until_finished()
                if jax.process_index() == 0:
                    directory = self._step_dir(name, epoch)
                    write_json_atomic(directory / CHECKSUMS, _file_digests(directory))
            except (OSError, ValueError) as e:
                # TensorStore reports a failed write (a full disk) as a ValueError.
                if isinstance(e, ValueError) and "Error writing" not in str(e):
                    raise
                reason = e.strerror if isinstance(e, OSError) else _tensorstore_reason(str(e))
                raise UserError(f"{manager.directory}: could not save checkpoint {epoch} "
                                f"({reason}); the previous checkpoints are intact, continue "
                                "with train --resume once the disk has room") from None

    def latest_epoch(self, which: str = LATEST) -> int | None:
        return self._managers[which].latest_step()

    def restore(self, which: str, template: Any, fallback: bool = False) -> tuple[Any, dict]:
        """The state (shaped like ``template``, zero rows appended or dropped where the saved
        arrays have other row counts) and progress of the newest complete checkpoint.

        A damaged checkpoint is an error naming it, or with ``fallback``, the next older intact
        one is read instead (a line on stderr says so).
        """
        manager = self._managers[which]
        epochs = sorted(manager.all_steps(), reverse=True)
        if not epochs:
            raise UserError(f"{manager.directory}: no complete checkpoint")
        abstract = jax.tree.map(_restore_target, template)
        problems = []
        for epoch in epochs if fallback else epochs[:1]:
            problem = _damage(self._step_dir(which, epoch))
            if problem is None:
                try:
                    restored = manager.restore(epoch, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract, strict=False),
                        progress=ocp.args.JsonRestore()))
                except (ValueError, KeyError, FileNotFoundError, OSError) as e:
                    # tensorstore's messages run to kilobytes
                    problem = f"unreadable: {type(e).__name__}: {str(e).split(':', 1)[0][:80]}"
            if problem is None:
                if problems and jax.process_index() == 0:
                    print(f"{manager.directory}: {'; '.join(problems)}; using checkpoint "
                          f"{epoch}", file=sys.stderr)
                return restored.state, restored.progress
            problems.append(f"checkpoint {epoch} is damaged ({problem})")
        raise UserError(f"{manager.directory}: {'; '.join(problems)}; {self._intact_left()}")

    def _step_dir(self, which: str, epoch: int) -> Path:
        return Path(self._managers[which].directory) / str(epoch)

    def _intact_left(self) -> str:
        """Which checkpoints of the run are still intact, for an error message."""
        intact = [f"{which} {epoch}" for which, manager in self._managers.items()
                  for epoch in sorted(manager.all_steps(), reverse=True)
                  if _damage(self._step_dir(which, epoch)) is None]
        if not intact:
            return "no intact checkpoint is left"
        return f"intact: {', '.join(intact)} (choose one with --checkpoint best|latest)"

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _restore_target(leaf) -> jax.ShapeDtypeStruct:
    """What a leaf of the template restores as: its own sharding, or, for a template of shapes
    alone (serving, evaluation), this process's first device; never the saved one, whose
    topology (8 devices, 2 processes) may not exist here."""
    target = ocp.utils.to_shape_dtype_struct(leaf)
    if getattr(target, "sharding", None) is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.ShapeDtypeStruct(target.shape, target.dtype, sharding=device)
    return target


def _quiet_orbax():
    """Orbax's writer threads log a failed write with its traceback before the save raises it;
    the save's own error says what happened, in one line."""
    return logger_level("absl", logging.CRITICAL)


def _file_digests(directory: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``directory`` (but the checksums themselves)."""
    return {str(path.relative_to(directory)): file_sha256(path)
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != CHECKSUMS}


def _damage(directory: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, or None if they match their checksums.

    A checkpoint without checksums (saved by an older version, or by a process killed between
    Orbax's commit and the checksums) is left to Orbax's own checks.
    """
    try:
        recorded = json.loads((directory / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"its {CHECKSUMS} is unreadable"
    for name, digest in recorded.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None
