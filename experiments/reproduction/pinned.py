"""Runs a command on some of the cores only (what util-linux's ``taskset`` does, without it):

    python -m experiments.reproduction.pinned 0,1 COMMAND [ARG ...]

The affinity is set in this process, which then becomes COMMAND (``exec``): no fork of a
process that may hold threads, and COMMAND's threads inherit it.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.sched_setaffinity(0, {int(core) for core in sys.argv[1].split(",")})
    os.execvp(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
