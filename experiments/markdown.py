"""The one home of the experiment scripts' markdown: tables and the small formats in their cells."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines: ``| a | b |``, the separator, one line per row."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def seed_list(seeds: Sequence[object]) -> str:
    """``seed 1`` or ``seeds 1, 2``."""
    return ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(map(str, seeds))


def duration(seconds: float) -> str:
    """``42 s``, ``12 min`` or ``1.5 h``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def relative_gap(ours: float, reference: float) -> str:
    """``+1.2%``: how far ``ours`` is from ``reference``, relative to it."""
    return f"{100 * (ours - reference) / reference:+.1f}%"


def mean_std(stat: dict | None) -> str:
    """``0.0750 ± 0.0071`` from ``{"mean", "std"}`` (no spread for one seed), or ``–``."""
    if not stat:
        return "–"
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat["std"] is not None else "")
