"""The codebase's shape: one home per concern, small modules, serving apart from training."""

import subprocess
import sys

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
    pieces = [*(REPO / "experiments" / "reproduction").glob("*.py"),
              REPO / "experiments" / "markdown.py"]
    for path in pieces:
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

    for path in sorted((REPO / "experiments").rglob("*.py")):
        if not {"results", "configs"} & set(path.relative_to(REPO).parts):
            importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))


_SETTINGS = """
import logging, sys
import jax._src.monitoring as monitoring
import tensorflow_datasets as tfds

def settings():
    return (sys.unraisablehook, tfds.core.utils.tqdm_utils._active,
            {n: logging.getLogger(n).level for n in ("absl", "asyncio", "jax", "orbax")},
            len(monitoring._event_duration_secs_listeners))
"""


def test_no_module_changes_process_settings_on_import_and_the_cli_undoes_its_own():
    """Importing every module, then running commands in the process (one that fails with a
    user's mistake, one that reads a dataset through TFDS), leaves hooks, loggers, TFDS's
    progress bars and JAX's listeners as they were."""
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts)
                     for p in (REPO / "mqsa_jax").rglob("*.py") if p.stem != "__main__")
    script = _SETTINGS + f"""
before = settings()
for name in {modules!r}:
    __import__(name)
assert settings() == before, ("import", before, settings())
from mqsa_jax.cli import main
assert main(["data", "import", "/no/such/log.csv", "--format", "csv", "--name", "x"]) == 2
assert main(["data", "info", "toys"]) == 0
assert settings() == before, ("cli", before, settings())
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
