"""Fixtures: an isolated data directory per session, the authors' release, a tiny dataset."""

import subprocess
from pathlib import Path

import pytest

from tests.helpers import EPOCHS, RELEASE_DIR, REPO, cli, tiny_train_args


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One user data directory for the whole session, so built-ins are prepared once."""
    return tmp_path_factory.mktemp("mqsa-data")


@pytest.fixture(autouse=True)
def _isolated_data_dir(data_root, monkeypatch):
    monkeypatch.setenv("MQSA_DATA_DIR", str(data_root))


@pytest.fixture
def release_dir() -> Path:
    if not (RELEASE_DIR / "SHA256SUMS").is_file():
        pytest.skip(f"authors' release not found at {RELEASE_DIR}")
    return RELEASE_DIR


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A folder with a small imported dataset ``tiny`` in its ``data`` directory."""
    from mqsa_jax.cli import main
    from mqsa_jax.data.importers import export_sasrec
    from tests.helpers import random_dataset

    root = tmp_path_factory.mktemp("tiny")
    export_sasrec(random_dataset(num_users=60, num_items=40, max_length=20, seed=3),
                  root / "log.txt")
    assert main(["data", "import", str(root / "log.txt"), "--format", "sasrec", "--name", "tiny",
                 "--min-count", "1", "--data-dir", str(root / "data")]) == 0
    return root


@pytest.fixture(scope="session")
def uninterrupted(tiny_dataset) -> Path:
    """A run of the tiny dataset, trained for ``EPOCHS`` epochs without interruption."""
    run = tiny_dataset / "uninterrupted"
    subprocess.run(cli("train", *tiny_train_args(tiny_dataset, run), "--epochs", str(EPOCHS)),
                   check=True, cwd=REPO, capture_output=True)
    return run
