"""Shared test helpers: small datasets for fast model and training tests, and the CLI."""

import sys
from pathlib import Path

import numpy as np

from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.data.dataset import Dataset, from_full_sequences

REPO = Path(__file__).resolve().parents[1]
RELEASE_DIR = REPO.parent / "shared" / "data" / "mqsa-ted-release"
EPOCHS = 5  # of the ``uninterrupted`` fixture's run


def random_dataset(num_users=40, num_items=30, max_length=14, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, max_length + 1, num_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # Items follow a noisy cycle, so that transitions carry signal.
    starts = rng.integers(0, num_items, num_users)
    steps = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    noise = rng.integers(0, 3, offsets[-1]) * (rng.random(offsets[-1]) < 0.2)
    items = (np.repeat(starts, lengths) + steps + noise) % num_items
    return from_full_sequences("random", items, offsets, num_items,
                               np.arange(num_users).astype(str), np.arange(num_items).astype(str))


def first_users(dataset: Dataset, count: int) -> Dataset:
    """The first ``count`` users of a dataset, with its whole catalogue."""
    end = dataset.train_offsets[count]
    return Dataset(dataset.name, dataset.train_items[:end], dataset.train_offsets[:count + 1],
                   dataset.valid[:count], dataset.test[:count], dataset.num_items,
                   dataset.user_ids[:count], dataset.item_ids)


def small_data(max_len=10, **kwargs):
    return build_sequence_data(random_dataset(**kwargs), max_len=max_len)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Runs ``mqsa-jax argv...`` in this process: (exit code, stdout, stderr)."""
    from mqsa_jax.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse exits on usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def tiny_train_args(root: Path, run_dir: Path) -> list[str]:
    """``train`` arguments for the ``tiny_dataset`` fixture's dataset: small and fast."""
    return ["--dataset", "tiny", "--data-dir", str(root / "data"), "--run-dir", str(run_dir),
            "--no-progress", "--set", "max_len=16", "--set", "batch_size=32"]


def cli(*args) -> list[str]:
    """The command line of ``mqsa-jax args...`` in a separate process."""
    return [sys.executable, "-m", "mqsa_jax", *args]


def tensorboard_scalars(run_dir: Path) -> dict[str, list]:
    """The scalars of a run's event files as TensorBoard's own reader loads them:
    tag -> [(step, value)]."""
    import pytest

    # The test extra brings TensorBoard; the accelerator machine's wheels leave it out.
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    return [step for step, _ in tensorboard_scalars(run_dir)[tag]]
