"""Times one epoch of ``mqsa-jax train`` on several process layouts of one machine.

    python -m experiments.benchmarks.multiprocess [--dataset toys] [--epochs 1] [--timeout 1200]
        [--layouts 1x1x1 2x1x2,1 2x1x1,2 2x2x2,2]

A layout ``PxDxM,N`` is P processes of D CPU devices each (``JAX_COORDINATOR_ADDRESS`` on
localhost) training on the mesh data=M,model=N; ``1x1x1`` is the single device.  Each layout
runs through the CLI from a fresh run directory, so compilation is included in the wall time
but not in the epoch's ``train_seconds``.  A layout that runs past ``--timeout`` is killed and
recorded as stalled.  Results are rewritten after every layout (``multiprocess.json`` and
``.md`` in ``--results``), so an interrupted sweep keeps what finished; a layout already
recorded for the same dataset and epochs is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.markdown import table
from experiments.measure import machine, machine_line
from mqsa_jax.io import write_json_atomic, write_text_atomic
from mqsa_jax.rundir import RunDir

HERE = Path(__file__).resolve().parents[1]  # experiments/
DEFAULT_LAYOUTS = ("1x1x1,1", "2x1x2,1", "2x1x1,2", "2x2x2,2")


def parse_layout(text: str) -> tuple[int, int, int, int]:
    """``"2x2x2,2"`` -> (processes 2, devices per process 2, data 2, model 2)."""
    shape, _, model = text.partition(",")
    processes, devices, data = (int(v) for v in shape.split("x"))
    return processes, devices, data, int(model or 1)


def local_process_envs(processes: int, devices: int) -> list[dict[str, str]]:
    """The environments of ``processes`` cooperating JAX processes on this machine, each of
    ``devices`` CPU devices (one process: no coordinator), built on ``os.environ``."""
    envs = [dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
            for _ in range(processes)]
    if processes > 1:
        with socket.socket() as s:  # a free port for process 0's coordinator
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        for process, env in enumerate(envs):
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(process))
    return envs


def run_layout(layout: str, dataset: str, epochs: int, timeout: float, workdir: Path) -> dict:
    """Trains ``dataset`` for ``epochs`` on ``layout``; returns its figures, or its stall."""
    processes, devices, data, model = parse_layout(layout)
    run_dir = workdir / layout.replace(",", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "mqsa_jax.cli", "train", "--dataset", dataset,
               "--epochs", str(epochs), "--mesh", f"data={data},model={model}",
               "--run-dir", str(run_dir), "--no-progress"]
    started = time.perf_counter()
    children = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
                for env in local_process_envs(processes, devices)]
    record = {"layout": layout, "processes": processes, "devices_per_process": devices,
              "mesh": f"data={data},model={model}"}
    try:
        errors = [child.communicate(timeout=max(timeout - (time.perf_counter() - started), 1))[1]
                  for child in children]
    except subprocess.TimeoutExpired:
        for child in children:
            child.kill()
            child.wait()
        return {**record, "status": "stalled", "wall_seconds": round(timeout)}
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    failed = [(child.returncode, err) for child, err in zip(children, errors) if child.returncode]
    if failed:
        code, err = failed[0]
        return {**record, "status": f"failed (exit {code})", "error": err.strip()[-500:]}
    history = RunDir(run_dir).metrics()
    last = history[-1]
    return {**record, "status": "finished",
            "train_seconds": [r["train_seconds"] for r in history],
            "loss": last["loss"], "valid": last.get("valid"), "test": last.get("test")}


def largest_gap(record: dict, reference: dict | None) -> str:
    """The largest relative difference of ``record``'s valid and test metrics from
    ``reference``'s (the single device's)."""
    if not reference or not record.get("test"):
        return "-"
    gaps = [abs(record[split][name] - value) / max(abs(value), 1e-12)
            for split in ("valid", "test") for name, value in reference[split].items()]
    return f"{max(gaps):.1e}"


def markdown(results: dict) -> str:
    single = next((r for r in results["layouts"]
                   if r["layout"] == "1x1x1,1" and r.get("test")), None)
    rows = []
    for r in results["layouts"]:
        epoch = f"{r['train_seconds'][-1]:.1f}" if "train_seconds" in r else "-"
        ndcg = f"{r['test']['NDCG@20']:.5f}" if r.get("test") else "-"
        rows.append([r["layout"], str(r["processes"]), str(r["devices_per_process"]), r["mesh"],
                     r["status"], f"{r['wall_seconds']:.0f}", epoch, ndcg,
                     largest_gap(r, single)])
    header = ["layout", "processes", "devices each", "mesh", "status", "wall s",
              "last epoch's train s", "test NDCG@20", "largest rel. diff. from 1x1x1"]
    return (f"# {results['dataset']}: {results['epochs']} epoch(s) per process layout\n\n"
            f"Command: `{results['command']}`\n\n"
            f"Machine: {machine_line(results['machine'])}\n\n"
            + "\n".join(table(header, rows)) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="toys")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per layout")
    parser.add_argument("--layouts", nargs="+", default=list(DEFAULT_LAYOUTS))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    for layout in args.layouts:
        parse_layout(layout)  # fail on a typo before any run
    path = args.results / "multiprocess.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if (results.get("dataset"), results.get("epochs")) != (args.dataset, args.epochs):
        results = {"dataset": args.dataset, "epochs": args.epochs, "layouts": []}
    results.update(command="python -m experiments.benchmarks.multiprocess "
                   + " ".join(argv or sys.argv[1:]), machine=machine())
    done = {r["layout"] for r in results["layouts"] if r["status"] == "finished"}
    with tempfile.TemporaryDirectory() as workdir:
        for layout in args.layouts:
            if layout in done:
                continue
            print(f"{layout}: training", file=sys.stderr, flush=True)
            record = run_layout(layout, args.dataset, args.epochs, args.timeout, Path(workdir))
            print(f"{layout}: {record['status']} in {record['wall_seconds']} s", file=sys.stderr,
                  flush=True)
            results["layouts"] = [r for r in results["layouts"] if r["layout"] != layout]
            results["layouts"].append(record)
            write_json_atomic(path, results)
            write_text_atomic(path.with_suffix(".md"), markdown(results))
    write_text_atomic(path.with_suffix(".md"), markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
