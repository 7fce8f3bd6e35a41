import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RELEASE_DIR = REPO.parent / "shared" / "data" / "mqsa-ted-release"


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


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from mqsa_jax.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse exits on usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
