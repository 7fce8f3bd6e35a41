"""The accelerator check (experiments/benchmarks/accelerator) in its CPU dry run: every part
runs and writes its figures, with nothing downloaded or installed."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

ACCELERATOR = REPO / "experiments" / "benchmarks" / "accelerator"


@pytest.mark.scale
def test_the_dry_run_writes_every_part(tmp_path, data_root):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ACCELERATOR / "run.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable,
                               "MQSA_DATA_DIR": str(data_root)})
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "accelerator.json").read_text())
    assert report["errors"] == {}, (out / "check.log").read_text()[-3000:]
    assert report["dry_run"] and report["device"]["devices"] >= 1
    assert report["float32_products"]["train_epoch_s"] > 0
    assert report["bfloat16_products"]["train_epoch_s"] > 0
    assert report["chunked_catalogue"]["items"] == 5_000 and report["chunked_catalogue"][
        "step_s"] > 0
    assert len(report["float32_products"]["curve"]) == len(
        report["bfloat16_products"]["curve"]) == 2
    assert "| epoch | bfloat16: loss |" in (out / "accelerator.md").read_text()
    assert not (out / "install.log").exists()  # the dry run installs nothing
    assert "tests: exit 0" in done.stdout, (out / "tests.log").read_text()[-2000:]


def test_the_wheels_list_holds_what_the_machine_lacks():
    wanted = {line.strip() for line in
              (ACCELERATOR / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    # The project's own dependencies that the H200 machine does not have (it has jax, flax,
    # optax, orbax-checkpoint), and pytest for the suite.
    assert {"tensorflow-datasets", "array-record", "tensorboardX", "flatbuffers", "tqdm",
            "importlib-resources", "pytest"} <= wanted
