"""Orbax checkpoints of a training run: the latest two epochs, and the best one.

A checkpoint holds everything a resumed run needs, so that it ends exactly as an uninterrupted
one: the train state (parameters, optimizer state, step, dropout key) and, as JSON, the epoch,
the data-order generator's state, the metrics history, the best-so-far record and the resolved
config.  Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a process killed during a save leaves the previous checkpoint intact, and only complete ones
are listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mqsa_jax.errors import UserError

LATEST, BEST = "latest", "best"


def _manager(directory: Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,  # leftovers of a save that was killed
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


class RunCheckpoints:
    """The ``checkpoints/latest`` and ``checkpoints/best`` managers of one run directory."""

    def __init__(self, run_dir: Path, read_only: bool = False):
        root = run_dir / "checkpoints"
        if read_only and not root.is_dir():
            raise UserError(f"{run_dir}: no checkpoints (not a training run directory?)")
        self._managers = {LATEST: _manager(root / LATEST, 2, read_only),
                          BEST: _manager(root / BEST, 1, read_only)}

    def save(self, epoch: int, state: Any, progress: dict, is_best: bool) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  progress=ocp.args.JsonSave(progress))
        for name in (LATEST, BEST) if is_best else (LATEST,):
            self._managers[name].save(epoch, args=args, force=True)
            self._managers[name].wait_until_finished()

    def latest_epoch(self, which: str = LATEST) -> int | None:
        return self._managers[which].latest_step()

    def restore(self, which: str, template: Any) -> tuple[Any, dict]:
        """The state (shaped like ``template``) and progress of the newest complete checkpoint."""
        manager = self._managers[which]
        epoch = manager.latest_step()
        if epoch is None:
            raise UserError(f"{manager.directory}: no complete checkpoint")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
        except (ValueError, KeyError, FileNotFoundError, OSError) as e:
            reason = str(e).split(":", 1)[0][:80]  # tensorstore's messages run to kilobytes
            raise UserError(f"{manager.directory}: checkpoint {epoch} is unreadable, truncated "
                            f"or damaged ({type(e).__name__}: {reason})") from None
        return restored.state, restored.progress

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
