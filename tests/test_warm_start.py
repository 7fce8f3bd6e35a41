"""Warm start (``train --init-from``) across a catalogue that gained and lost items."""

import json

import jax
import numpy as np
import pytest

from mqsa_jax.config import build_config
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.data.dataset import Dataset, save_store
from mqsa_jax.model import item_table
from mqsa_jax.rundir import RunDir
from mqsa_jax.runs import restore_trained
from mqsa_jax.train import train
from mqsa_jax.trainer import Trainer
from mqsa_jax.warm_start import warm_source, warm_state
from tests.helpers import random_dataset, run_cli

SMALL = {"max_len": 10, "batch_size": 32, "eval_batch_size": 64}
# The grown catalogue: i0-i4 left, n0-n6 are new, and the rows come in another order.
OLD_IDS = np.array([f"i{k}" for k in range(40)])
GROWN_IDS = np.random.default_rng(1).permutation(
    [f"i{k}" for k in range(5, 40)] + [f"n{k}" for k in range(7)])


def _store(root, name: str, dataset: Dataset, item_ids: np.ndarray) -> None:
    save_store(Dataset(name, dataset.train_items, dataset.train_offsets, dataset.valid,
                       dataset.test, dataset.num_items, dataset.user_ids, item_ids),
               registry.imported_store(name, root))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(data directory, a run trained 3 steps on ``old``) with ``grown`` imported beside."""
    root = tmp_path_factory.mktemp("warm") / "data"
    _store(root, "old", random_dataset(num_users=60, num_items=40, seed=3), OLD_IDS)
    _store(root, "grown", random_dataset(num_users=70, num_items=42, seed=4), GROWN_IDS)
    run = root.parent / "source"
    train(build_config({**SMALL, "dataset": "old", "max_steps": 3}), run, root, progress=False)
    return root, run


def test_rows_are_matched_by_item_id_and_ranking_is_kept(source):
    root, run = source
    config = build_config({**SMALL, "dataset": "grown", "init_from": str(run)})
    dataset = registry.load_dataset("grown", root)
    trainer = Trainer(config, build_sequence_data(dataset, 10))
    state = trainer.init_state()
    fresh = np.asarray(item_table(state.params)).copy()
    warm, report = warm_state(state, warm_source(config, root), GROWN_IDS)
    model, trained, _ = restore_trained(run, "best", build_config({**SMALL, "dataset": "old"}),
                                        40)
    old_table, table = np.asarray(item_table(trained.params)), np.asarray(item_table(warm.params))
    position = {item: row for row, item in enumerate(GROWN_IDS)}
    for k in range(5, 40):  # every item both know: its trained row
        np.testing.assert_array_equal(table[position[f"i{k}"]], old_table[k])
    new_rows = [position[f"n{k}"] for k in range(7)]
    np.testing.assert_array_equal(table[new_rows], fresh[new_rows])  # new: initialised
    assert not np.allclose(fresh[new_rows], 0)
    assert (report["items_copied"], report["items_new"], report["items_dropped"]) == (35, 7, 5)
    assert report["parameters_initialised"] == [] and report["step"] == 3
    for (_, a), b in zip(jax.tree_util.tree_leaves_with_path(trained.params["params"]),
                         jax.tree.leaves(warm.params["params"])):
        if a.shape == b.shape:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # Before any step, a history of shared items ranks the shared items as the source did.
    shared = np.array([f"i{k}" for k in (7, 12, 30, 5, 22)])
    history = np.searchsorted(OLD_IDS, shared, sorter=np.argsort(OLD_IDS))
    history = np.argsort(OLD_IDS)[history]
    mapped = np.array([position[i] for i in shared])
    pad_old = np.full((1, 10), 40, np.int32)
    pad_old[0, -5:] = history
    pad_new = np.full((1, 10), 42, np.int32)
    pad_new[0, -5:] = mapped
    old_scores = np.asarray(model.encode_last(trained.params, pad_old) @ old_table.T)[0]
    new_scores = np.asarray(trainer.model.encode_last(warm.params, pad_new) @ table.T)[0]
    both = [f"i{k}" for k in range(5, 40)]
    old_order = [OLD_IDS[i] for i in np.argsort(-old_scores, kind="stable") if OLD_IDS[i] in both]
    new_order = [GROWN_IDS[i] for i in np.argsort(-new_scores, kind="stable")
                 if GROWN_IDS[i] in both]
    assert old_order == new_order


def test_the_cli_records_the_source_and_the_run_is_ordinary(source, capsys):
    root, run = source
    warm_dir = root.parent / "warm_cli"
    code, out, err = run_cli(capsys, "train", "--dataset", "grown", "--init-from", str(run),
                             "--checkpoint", "latest", "--run-dir", str(warm_dir),
                             "--data-dir", str(root), "--no-progress",
                             *[f"--set={k}={v}" for k, v in SMALL.items()],
                             "--set", "max_steps=2")
    assert code == 0, err
    assert "warm start from" in err and "35 item rows copied, 7 new, 5 dropped" in err
    config = json.loads((warm_dir / "config.json").read_text())
    assert config["train"]["init_from"] == str(run.resolve())
    assert config["train"]["init_checkpoint"] == "latest"
    provenance = json.loads(RunDir(warm_dir).provenance_file.read_text())["init_from"]
    assert provenance["checkpoint"] == "latest" and provenance["items_new"] == 7
    assert RunDir(warm_dir).item_ids().tolist() == GROWN_IDS.tolist()
    code, out, err = run_cli(capsys, "evaluate", str(warm_dir), "--data-dir", str(root))
    assert code == 0, err
    assert set(json.loads(out)) >= {"valid", "test"}
    # Resumed, it goes on from its own checkpoint: the source is not read again.
    code, out, err = run_cli(capsys, "train", "--resume", str(warm_dir), "--data-dir",
                             str(root), "--no-progress", "--set", "max_steps=3")
    assert code == 0, err
    assert "resuming" in err and "warm start" not in err
    assert [r["step"] for r in RunDir(warm_dir).metrics()] == [2, 3]
    code, _, err = run_cli(capsys, "export", str(warm_dir), str(root.parent / "export"),
                           "--data-dir", str(root))
    assert code == 0, err
    assert (root.parent / "export" / "item_embeddings.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["--init-from", "{root}"], "not a training run directory"),
    (["--init-from", "{run}", "--set", "hidden=32"], "its model config differs: hidden (64 there,"
                                                     " 32 here)"),
    (["--init-from", "{run}", "--resume", "{run}"], "give one of them"),
    (["--checkpoint", "best"], "give --init-from"),
])
def test_bad_uses_are_one_line_exit_2(source, capsys, args, message):
    root, run = source
    args = [a.format(root=root, run=run) for a in args]
    if "--run-dir" not in args and "--resume" not in args:
        args += ["--run-dir", str(root.parent / "never")]
    code, out, err = run_cli(capsys, "train", "--dataset", "grown", "--data-dir", str(root),
                             "--set", "max_len=10", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (root.parent / "never").exists()
