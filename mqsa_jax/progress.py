"""Where a run stands: the typed record each checkpoint carries beside the train state, and how
far an epoch has gone when a run stops inside one."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EpochPartial:
    """How far an epoch has gone: its batches done, their summed losses (device scalars), and
    its training seconds and targets."""

    batches: int = 0
    totals: dict | None = None
    seconds: float = 0.0
    targets: int = 0

    def means(self) -> dict[str, float]:
        """The mean batch losses (none before a batch)."""
        return {k: float(v) / self.batches for k, v in (self.totals or {}).items()}

    def to_json(self) -> dict:
        return {"batches": self.batches,
                "totals": {k: float(v) for k, v in (self.totals or {}).items()},
                "seconds": self.seconds, "targets": self.targets}

    @classmethod
    def from_json(cls, saved: dict) -> EpochPartial:
        # float32, as the device summed them: the sums go on exactly as without the stop.
        return cls(saved["batches"], {k: np.float32(v) for k, v in saved["totals"].items()},
                   saved["seconds"], saved["targets"])


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """A checkpoint's progress: enough to go on from it exactly as if the run had not stopped.

    Attributes:
      epoch: the epoch the checkpoint was saved in (complete unless ``partial``).
      shuffler: the order generator's state after that epoch's order was drawn.
      history: every metrics record so far (the metrics file is rewritten from it).
      best: the best evaluated record, or None.
      stale: evaluations since the best one (early stopping's count).
      config: the run's config as JSON.
      num_items: the catalogue it was trained on.
      partial: inside an epoch, how far it went; ``epoch_shuffle`` then is the generator's
        state before that epoch's order was drawn, to draw it again.
      step_shapes: the batch shapes' plan (:meth:`mqsa_jax.step_shapes.ShapePlan.to_json`), so
        that a resumed run pads the batches it would have padded (None: saved before plans).
    """

    epoch: int
    shuffler: dict
    history: list[dict]
    best: dict | None
    stale: int
    config: dict
    num_items: int
    partial: EpochPartial | None = None
    epoch_shuffle: dict | None = None
    step_shapes: dict | None = None

    def to_json(self) -> dict:
        """The checkpoint's JSON (its keys as checkpoints have always stored them)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        partial, shuffle = fields.pop("partial"), fields.pop("epoch_shuffle")
        return {**fields, "partial": None if partial is None else {**partial.to_json(),
                                                                   "shuffle": shuffle}}

    @classmethod
    def from_json(cls, saved: dict, num_items: int) -> RunProgress:
        """The record of a checkpoint's JSON; ``num_items`` where it predates that field."""
        partial = saved.get("partial")
        return cls(saved["epoch"], saved["shuffler"], saved["history"], saved["best"],
                   saved["stale"], saved.get("config", {}), saved.get("num_items", num_items),
                   EpochPartial.from_json(partial) if partial else None,
                   partial["shuffle"] if partial else None, saved.get("step_shapes"))


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """Where a run that counts steps stops inside an epoch, to evaluate and checkpoint or to
    finish: every ``eval_every`` steps and at ``max_steps`` (0: never)."""

    max_steps: int = 0
    eval_every: int = 0

    @property
    def counts_steps(self) -> bool:
        """Whether checkpoints and metrics records are numbered by step (else by epoch)."""
        return bool(self.max_steps or self.eval_every)

    def finished(self, step: int) -> bool:
        return bool(self.max_steps) and step >= self.max_steps

    def due(self, step: int) -> bool:
        """Whether an evaluation falls on ``step``."""
        return bool(self.eval_every) and step % self.eval_every == 0

    def next_stop(self, step: int, done: int, batches: int) -> int:
        """The batch of the epoch (``done`` of ``batches`` done, at ``step``) the steps run to:
        the epoch's end, the next evaluation or ``max_steps``, whichever comes first."""
        stop = batches
        if self.eval_every:
            stop = min(stop, done + self.eval_every - step % self.eval_every)
        if self.max_steps:
            stop = min(stop, done + max(self.max_steps - step, 0))
        return stop
