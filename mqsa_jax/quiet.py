"""Libraries' own chatter, silenced for a scope and restored after it: a user reads our one-line
messages and progress, and no module changes process-wide state when it is imported."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Python logger ``name`` at ``level`` inside the block, at its own level again after."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
