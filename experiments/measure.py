"""What every experiment script records beside its figures: the machine it ran on, and medians
of timed calls."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from mqsa_jax.rundir import cpu_model


def machine() -> dict:
    """This machine, described without starting an accelerator backend."""
    info = {"host": platform.node(), "system": platform.system(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        if gpus.returncode == 0 and gpus.stdout.strip():
            info["gpus"] = gpus.stdout.split("\n")[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    import jax  # the version only; importing jax does not start a backend

    info["jax"] = jax.__version__
    return info


def machine_line(info: dict | None = None) -> str:
    """One line for a results file's header: CPU, cores, GPU, system, Python and jax."""
    info = info or machine()
    gpu = f", {info['gpus']}" if "gpus" in info else ""
    return (f"{info['cpu']}, {info['cpu_count']} cores{gpu}, {info['system']}, "
            f"Python {info['python']}, jax {info['jax']}")


def median_seconds(call: Callable[[], Any], repeats: int = 7) -> float:
    """Median wall time of ``call()`` until its result is ready; the first call (compilation,
    loading) is not counted."""
    import jax

    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_step_seconds(step: Callable[[Any], tuple[Any, Any]], state: Any,
                        repeats: int = 7) -> tuple[float, Any, Any]:
    """Median wall time of ``state, out = step(state)``, threading the state through, as a
    train step that donates it requires; the first call is not counted.  Returns the median
    and the last state and output."""
    import jax

    state, out = step(state)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, out = step(state)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return statistics.median(times), state, out
