"""The codebase's shape: one home per concern, small modules, serving apart from training."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

TRAINING = ("mqsa_jax.train", "mqsa_jax.steps", "mqsa_jax.losses", "mqsa_jax.blocked",
            "mqsa_jax.packing")


def test_serving_imports_nothing_of_training():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, mqsa_jax.recommend, mqsa_jax.cli; "
                               "print(' '.join(sorted(sys.modules)))"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert not set(TRAINING) & set(loaded), set(TRAINING) & set(loaded)


def test_no_module_is_over_300_lines_and_no_reproduction_piece_over_250():
    sizes = {p: len(p.read_text().splitlines()) for p in (REPO / "mqsa_jax").rglob("*.py")}
    assert max(sizes.values()) <= 300, max(sizes, key=sizes.get)
    pieces = ("reproduce", "plan", "runner", "summary", "claims", "report", "readme", "plots",
              "markdown")
    for name in pieces:
        path = Path(REPO / "experiments" / f"{name}.py")
        assert len(path.read_text().splitlines()) <= 250, path


def test_the_mesh_and_the_model_do_not_depend_on_each_other():
    """The partitioner maps logical axis names to the mesh; the model names its axes and reads
    its table through :mod:`mqsa_jax.tables`: neither imports the other, and no code finds a
    parameter by its path."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, mqsa_jax.partitioning; "
         "print('mqsa_jax.model' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    model_source = (REPO / "mqsa_jax" / "model.py").read_text()
    assert "mqsa_jax.partitioning" not in model_source
    for path in (REPO / "mqsa_jax").rglob("*.py"):
        assert "tree_map_with_path" not in path.read_text(), path


def test_every_experiment_script_imports():
    """A script that only runs in long experiments still imports what exists (a moved name
    fails here, not hours into a benchmark)."""
    import importlib

    for path in sorted((REPO / "experiments").glob("*.py")):
        importlib.import_module(f"experiments.{path.stem}")
