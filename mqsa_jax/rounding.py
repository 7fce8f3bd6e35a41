"""Whole numbers rounded up: how many blocks, batches or records cover a count, and the padded
sizes that divide evenly over a mesh."""

from __future__ import annotations


def ceil_div(count: int, size: int) -> int:
    """How many parts of ``size`` hold ``count`` (``ceil(count / size)``, exact for any int)."""
    return -(-count // size)


def round_up(count: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``count``."""
    return ceil_div(count, multiple) * multiple
