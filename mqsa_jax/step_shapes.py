"""Which compiled shape each training batch runs at: few compilations, little padding.

Every distinct batch shape ``(rows, capacity)`` (:mod:`mqsa_jax.packing`) is one compilation of
the train step, about 3.3 s on a 2-core CPU: beauty's first epoch met five shapes and yelp's
six, so the first epoch paid 19-21 s of compilation (``experiments/results/bench.md``).  A batch
may as well run at any larger compiled shape: the extra rows and targets are empty, masked out
of every sum, and each position's dropout bits do not depend on the array's size (threefry is
counter-based), so the losses are the same to float32 rounding (tested).

The plan is ski rental.  Where no compiled shape covers a batch, the fewest shapes that cover
every such batch of its window (the largest ones) are compiled.  Other batches run padded on the
cheapest compiled shape that covers them, until the padding a shape's batches have run adds up
to what a compilation costs (:attr:`ShapePlan.compile_cost_steps` of that shape's own steps);
then the shape compiles.  A rare shape never compiles, a frequent one compiles early, and no
shape pays more than one compilation's worth of padding.

The plan sees only the batches' agreed shapes, in order, so every process of a run makes the
same choices; its state is saved with each checkpoint, so a resumed run makes them too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

Shape = tuple[int, int]  # (packed rows, target capacity)

# A position's encoder work, forward and backward, in logits of the catalogue loss: a beauty
# step spends 8.9 ms on 32 x 50 positions and 99 ms on 3,072 rows x 12,101 items
# (experiments/results/bench.md), 5.6 us against 2.7 ns.  It only weighs rows against targets
# when padding is priced; it need not be exact.
POSITION_LOGITS = 2000.0


def covers(big: Shape, small: Shape) -> bool:
    """Whether a batch of shape ``small`` can run at ``big``."""
    return big[0] >= small[0] and big[1] >= small[1]


def largest(shapes: Sequence[Shape]) -> set[Shape]:
    """The shapes no other of ``shapes`` covers: the fewest that cover them all."""
    unique = set(shapes)
    return {s for s in unique if not any(t != s and covers(t, s) for t in unique)}


@dataclasses.dataclass
class ShapePlan:
    """The compiled shapes and the padding each other shape has run so far.

    Attributes:
      compile_cost_steps: a compilation's cost in steps of the shape compiled (0: every shape
        compiles when it first comes, nothing is padded).
      row_weight: a packed row's work in targets (``max_len`` positions' encoder work against
        one target's catalogue work).
      compiled: the shapes batches run at.
      padding: per shape not compiled, the padding its batches have run, in its own steps.
    """

    compile_cost_steps: float
    row_weight: float
    compiled: set[Shape] = dataclasses.field(default_factory=set)
    padding: dict[Shape, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def for_run(cls, compile_cost_steps: float, max_len: int, num_items: int,
                distill: bool) -> ShapePlan:
        """The plan of a run whose rows hold ``max_len`` positions and whose targets are
        scored against ``num_items`` items (twice with TED's student rows)."""
        return cls(compile_cost_steps,
                   max_len * POSITION_LOGITS / ((1 + distill) * max(num_items, 1)))

    def work(self, shape: Shape) -> float:
        """A step's work at ``shape``, in targets."""
        return shape[0] * self.row_weight + shape[1]

    def assign(self, shapes: Sequence[Shape]) -> list[Shape]:
        """The shape each of a window of batches (``shapes``, their own, in order) runs at."""
        if self.compile_cost_steps <= 0:
            self.compiled.update(shapes)
            return list(shapes)
        self.compiled |= largest([s for s in shapes if not self._covered(s)])
        chosen = []
        for shape in shapes:
            if shape not in self.compiled:
                # Ties go to the smaller shape, so that a restored plan picks alike.
                cover = min((c for c in self.compiled if covers(c, shape)),
                            key=lambda c: (self.work(c), c))
                padding = self.padding.get(shape, 0.0) + self.work(cover) / self.work(shape) - 1
                if padding < self.compile_cost_steps:
                    self.padding[shape] = padding
                    chosen.append(cover)
                    continue
                self.padding.pop(shape, None)
                self.compiled.add(shape)
            chosen.append(shape)
        return chosen

    def _covered(self, shape: Shape) -> bool:
        return any(covers(c, shape) for c in self.compiled)

    def to_json(self) -> dict:
        return {"compiled": sorted(map(list, self.compiled)),
                "padding": [[*shape, steps] for shape, steps in sorted(self.padding.items())]}

    def restore(self, saved: dict | None) -> None:
        """Takes up a checkpoint's :meth:`to_json` (None: from scratch)."""
        saved = saved or {"compiled": [], "padding": []}
        self.compiled = {(int(r), int(c)) for r, c in saved["compiled"]}
        self.padding = {(int(r), int(c)): float(steps) for r, c, steps in saved["padding"]}
