import json

import jax
import numpy as np
import pytest

from mqsa_jax.config import build_config
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.losses import l2_penalty
from mqsa_jax.model import item_table
from mqsa_jax.teacher import TeacherWeights
from mqsa_jax.trainer import Trainer
from tests.helpers import first_users, run_cli, small_data, tiny_train_args


def _dense_reference_losses(trainer, params, users, config):
    """The reference losses over full-width rows, dense teacher rows, no dropout."""
    data = trainer.data
    n, d = data.num_items, config.model.hidden
    inputs, targets = data.train_rows(users)
    states = np.asarray(trainer.model.apply(params, inputs, deterministic=True), np.float64)
    E = np.asarray(item_table(params), np.float64)
    real = inputs != n
    logits = np.concatenate([states @ E.T, np.zeros(states.shape[:2] + (1,))], axis=-1)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
    rec = ce[real].mean()
    teacher = TeacherWeights.from_transitions(data.transitions, config.loss.tau).dense()
    z = E[inputs[real]] * np.sqrt(d) @ E.T / config.loss.tau
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    kd = -(teacher[inputs[real]] * np.log(p + 1e-24)).sum(-1).mean()
    l2 = float(l2_penalty(params))
    return rec, kd, rec + config.loss.lambda_kd * kd + config.loss.l2_reg * l2


@pytest.mark.parametrize("windows, weights, chunk", [
    ((1, 3), (0.5, 0.5), 0), ((1,), (1.0,), 0), ((1, 3), (0.5, 0.5), 8)])
def test_packed_step_equals_the_dense_reference(windows, weights, chunk):
    data = small_data(max_len=10, num_users=40, max_length=16)
    config = build_config({"max_len": 10, "hidden": 16, "dropout": 0.0, "batch_size": 32,
                           "windows": windows, "window_weights": weights, "item_block": chunk})
    trainer = Trainer(config, data)
    state = trainer.init_state()
    params = jax.tree.map(np.array, state.params)  # the step donates the state
    users = np.arange(data.num_users)
    batch, count = next(trainer.packing.batches(users))
    segments = np.asarray(batch.segments)
    assert batch.capacity >= count == np.count_nonzero(segments)
    assert segments.shape[0] < 32 and max(len(np.unique(r)) for r in segments) > 2  # shared rows
    _, losses = trainer.train_step(state, trainer.arrays, batch)
    rec, kd, total = _dense_reference_losses(trainer, params, users[:32], config)
    np.testing.assert_allclose(float(losses["loss_rec"]), rec, rtol=1e-5)
    np.testing.assert_allclose(float(losses["loss_kd"]), kd, rtol=1e-5)
    np.testing.assert_allclose(float(losses["loss"]), total, rtol=1e-5)


def test_three_epochs_on_a_real_slice_beat_the_untrained_model(data_root):
    dataset = first_users(registry.load_dataset("toys", data_root), 1200)
    # Few batches: few shapes to compile.
    config = build_config({"dataset": "toys", "batch_size": 600})
    trainer = Trainer(config, build_sequence_data(dataset, config.model.max_len))
    state = trainer.init_state()
    before = trainer.evaluate(state.params)["valid"]["NDCG@20"]
    rng = np.random.default_rng(config.seed)
    for _ in range(3):
        state, losses = trainer.train_epoch(state, rng.permutation(dataset.num_users))
    after = trainer.evaluate(state.params)["valid"]["NDCG@20"]
    assert np.isfinite(losses["loss"])
    assert after > before + 0.005, (before, after)


def _train_cli(capsys, root, run_dir, *extra):
    return run_cli(capsys, "train", *tiny_train_args(root, run_dir), *extra)


def test_end_to_end_run_outputs_and_same_seed_same_metrics(tiny_dataset, capsys):
    runs = []
    for name in ("a", "b"):
        code, out, err = _train_cli(capsys, tiny_dataset, tiny_dataset / name, "--epochs", "3")
        assert code == 0, err
        runs.append(tiny_dataset / name)
    a, b = (json.loads((r / "results.json").read_text()) for r in runs)
    assert a == b
    assert set(a) >= {"best_epoch", "valid", "test"}
    assert set(a["test"]) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (5, 10, 20)} | {"MRR"}
    lines = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert {"loss", "loss_rec", "loss_kd", "train_seconds", "valid", "test"} <= set(lines[0])
    best = max(lines, key=lambda x: x["valid"]["NDCG@20"])
    assert a["best_epoch"] == best["epoch"] and a["test"] == best["test"]
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["model"]["max_len"] == 16 and config["dataset"] == "tiny"


def test_eval_every_and_refusing_a_used_run_dir(tiny_dataset, capsys):
    run = tiny_dataset / "every"
    code, _, err = _train_cli(capsys, tiny_dataset, run, "--epochs", "3", "--set", "eval_every=2")
    assert code == 0, err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["valid" in x for x in lines] == [False, True, True]  # epoch 2 and the last
    code, _, err = _train_cli(capsys, tiny_dataset, run, "--epochs", "1")
    assert code == 2 and "already holds a run" in err and "--resume" in err


@pytest.mark.parametrize("args, message", [
    (("--set", "nope=1"), "unknown config key 'nope'"),
    (("--set", "tau=abc"), "--set tau=abc: expected float"),
    (("--set", "windows=1,3", "--set", "window_weights=1"), "same, non-zero, length"),
    (("--config", "missing.py"), "missing.py: config file not found"),
])
def test_bad_train_arguments(tiny_dataset, capsys, args, message):
    code, _, err = _train_cli(capsys, tiny_dataset, tiny_dataset / "bad", *args)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tiny_dataset / "bad").exists()
