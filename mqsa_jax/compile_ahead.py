"""The first epoch's compilations, done on threads ahead of the steps that need them.

A run's batches come in a handful of shapes (:mod:`mqsa_jax.packing`) and its evaluation in a
few widths (:class:`mqsa_jax.evaluation.RankingEvaluator`), each compiled on first use.  XLA
compiles on one thread (a beauty train step: about 3 s of one core), and compiled on first use
the steps wait for it while the other core idles.  Here a thread walks the epoch's order ahead
of the steps, packs its batches and hands each new shape, then each evaluation width, to a pool
of compiling threads; a step whose shape is being compiled waits for that compilation alone.

Results do not change: every batch still runs in its own shape, and the executable compiled
ahead is the one ``jit`` finds in its cache at the step's call.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterable, Sequence

import jax

from mqsa_jax.packing import Batch


def abstract(tree):
    """``tree``'s arrays as shapes, dtypes and shardings: what lowering needs, without holding
    arrays that a donating step deletes."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def batch_shape(batch: Batch) -> tuple[int, int]:
    """What a batch's compiled step depends on: its packed rows and target capacity."""
    return batch.items.shape[0], batch.capacity


class AheadCompiler:
    """Compiles the train step for upcoming batches' shapes, then the evaluators' widths.

    Args:
      step: the partitioned train step (its ``lower(state, arrays, batch)``).
      place: a host batch -> the step's device batch.
      workers: compiling threads (default: the machine's cores, at most 4).
    """

    def __init__(self, step, place: Callable[[Batch], Batch], workers: int | None = None):
        self._step, self._place = step, place
        self._pool = concurrent.futures.ThreadPoolExecutor(
            workers or min(4, os.cpu_count() or 1), thread_name_prefix="compile-ahead")
        self._lock = threading.Lock()
        self._compiling: dict[tuple[int, int], concurrent.futures.Future | None] = {}
        self._walker: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, state, arrays, batches: Iterable[Batch],
              evaluations: Sequence[tuple[object, int]] = (), params=None) -> None:
        """Walks ``batches`` (host batches, in the steps' order) on a thread, compiling each new
        shape; then lowers ``evaluator.lowered(params, index)`` for each ``(evaluator, index)``
        of ``evaluations``.  ``state``, ``arrays`` and ``params`` may be arrays or their
        :func:`abstract` shapes."""
        state, params = abstract(state), abstract(params)

        def walk():
            for batch in batches:
                if self._stop.is_set():
                    return
                shape = batch_shape(batch)
                with self._lock:
                    if shape in self._compiling:
                        continue
                    self._compiling[shape] = self._pool.submit(
                        lambda b=batch: self._step.lower(state, arrays, self._place(b)).compile())
            for evaluator, index in evaluations:
                self._pool.submit(lambda e=evaluator, i=index: e.lowered(params, i).compile())

        self._walker = threading.Thread(target=walk, name="compile-ahead-walk", daemon=True)
        self._walker.start()

    def wait_for(self, batch: Batch) -> None:
        """Returns once ``batch``'s shape is compiled, if it is being compiled ahead; a shape
        not reached yet is left to the step (and is never compiled twice)."""
        with self._lock:
            future = self._compiling.setdefault(batch_shape(batch), None)
        if future is not None:
            future.result()

    def close(self, finish: bool = True) -> None:
        """Frees the threads once the walk and every compilation are done (``finish``), or once
        the compilations already running are (the steps stopped early)."""
        if not finish:
            self._stop.set()
        if self._walker is not None:
            self._walker.join()
        self._pool.shutdown(wait=True, cancel_futures=not finish)
