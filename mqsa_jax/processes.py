"""Runs of several processes: starting ``jax.distributed``, sizing XLA:CPU's thread pool
before the backend starts, stopping together on SIGTERM, and ending at once with one line
when a peer process dies.  (Where arrays live is :mod:`mqsa_jax.partitioning`'s.)"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

import jax

from mqsa_jax.errors import UserError

# Threads of XLA:CPU's pool per local CPU device in a run of several processes (see
# size_cpu_thread_pool): one per device stalls, one more for the process sufficed in every
# measured run; two per device leave a margin.
CPU_THREADS_PER_DEVICE = 2


def cpu_devices_per_process(env: dict[str, str]) -> int:
    """The CPU devices this process will have: ``jax_num_cpu_devices`` or XLA_FLAGS'
    ``--xla_force_host_platform_device_count`` (1 when neither is set)."""
    if jax.config.jax_num_cpu_devices > 0:
        return jax.config.jax_num_cpu_devices
    forced = re.search(r"--xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
    return int(forced.group(1)) if forced else 1


def size_cpu_thread_pool(env: dict[str, str]) -> None:
    """Gives XLA:CPU's thread pool at least ``CPU_THREADS_PER_DEVICE`` threads per local device,
    before the CPU backend starts, unless ``PJRT_NPROC`` or ``NPROC`` already sizes it.

    Across processes, CPU collectives go through Gloo, and a Gloo collective holds the pool
    thread that runs it until every peer has joined.  The pool has one thread per core by
    default.  Where a process has as many CPU devices as the pool has threads (two devices on
    a two-core machine), a step's collectives can hold every thread while a peer device of the
    same process still has work to start before it joins them: the run stalls inside a step,
    for ever, with each process's threads idle in ``GlooCommunicator``.  One process with more
    CPU devices than cores starves the same way inside XLA's own collectives (8 devices on two
    cores: "waiting for all reduce ... may be stuck", then an abort), so every run sizes it.
    """
    if "PJRT_NPROC" in env or "NPROC" in env:
        return
    needed = CPU_THREADS_PER_DEVICE * cpu_devices_per_process(env)
    if needed > (os.cpu_count() or 1):
        env["PJRT_NPROC"] = str(needed)


def maybe_initialize_distributed() -> bool:
    """Starts ``jax.distributed`` when the environment describes several processes.

    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0) with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; or a cluster JAX detects itself: a Cloud TPU pod slice
    (``TPU_WORKER_HOSTNAMES`` with several hosts) or a SLURM job with several tasks.
    """
    env = os.environ
    several = bool(env.get("JAX_COORDINATOR_ADDRESS")) or (
        "," in env.get("TPU_WORKER_HOSTNAMES", "") or int(env.get("SLURM_NTASKS", "1")) > 1)
    size_cpu_thread_pool(env)
    if env.get("JAX_COORDINATOR_ADDRESS"):
        try:
            jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"],
                                       num_processes=int(env["JAX_NUM_PROCESSES"]),
                                       process_id=int(env["JAX_PROCESS_ID"]))
        except (KeyError, ValueError) as e:
            raise UserError("JAX_COORDINATOR_ADDRESS needs JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                            f"as integers ({e})") from None
        return True
    if several:
        jax.distributed.initialize()
        return True
    return False


def stop_requested(step: int) -> bool:
    """Whether a run of several processes was sent SIGTERM (on any of its hosts), agreed by all
    of them at ``step``.

    With several processes, JAX's preemption service catches SIGTERM (a scheduler's or a TPU
    pod's preemption notice) and only records it, so a process that does not ask keeps running.
    Every process calls this at the same steps (after each epoch's checkpoint) and they stop
    together.  One process is stopped by SIGTERM itself.
    """
    if jax.process_count() == 1:
        return False
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)


# How a collective fails when a peer process is gone (Gloo on CPUs; the coordination service).
_PEER_GONE = re.compile(r"Gloo|[Cc]onnection (closed|reset) by peer|heartbeat|unhealthy")


def _say_peer_stopped(run_dir, who: str = "a peer process") -> None:
    print(f"mqsa-jax: {who} of this run stopped, so this one stops too; continue with: "
          f"mqsa-jax train --resume {run_dir} (on any mesh)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def peers_watched(run_dir, every_seconds: float = 5.0) -> Iterator[None]:
    """In a run of several processes, says in one line as soon as a peer process is gone, and
    how to resume, then ends this process (exit code 1).

    The first sign is usually a collective that fails in this process (Gloo's connection to the
    dead peer closes): its error is caught here, and the process exits at once, where JAX's
    shutdown would wait out the coordination heartbeat (about 50 s) and end in a stack dump.
    A daemon thread also asks the coordination service which processes are live every
    ``every_seconds``, for a process waiting outside any collective (the call waits for every
    live process's thread: a barrier of the watchers, not of the training).  Nothing is
    watched in a run of one process.
    """
    if jax.process_count() == 1:
        yield
        return
    # The distributed client is not public API; it is the one place JAX reports live processes.
    from jax._src import distributed as jax_distributed

    client, peers = jax_distributed.global_state.client, list(range(jax.process_count()))
    me = jax.process_index()

    def watch() -> None:
        while True:
            threading.Event().wait(every_seconds)
            try:
                live = client.get_live_nodes(peers)
            except Exception:  # the service itself is gone: JAX reports that on its own
                return
            if len(live) < len(peers):
                gone = [str(p) for p in peers if p not in live and p != me]
                _say_peer_stopped(run_dir, f"process {', '.join(gone)}" if gone else
                                  "a peer process")
                return

    threading.Thread(target=watch, name="mqsa-jax peers", daemon=True).start()
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if not _PEER_GONE.search(str(e)):
            raise
        _say_peer_stopped(run_dir)
        # A checkpoint being written is left incomplete, and resume skips it.
        os._exit(1)
