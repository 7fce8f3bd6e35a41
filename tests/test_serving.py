"""What users do with a trained run: TensorBoard, recommendations one at a time and in batches,
the exported scorer and user vectors, evaluation options and per-user ranks."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.data.dataset import full_sequences
from mqsa_jax.evaluation import label_ranks
from mqsa_jax.model import MQSA, item_table
from mqsa_jax.recommend import Recommender, recommend_file
from tests.helpers import EPOCHS, REPO, run_cli, tensorboard_scalars, tiny_train_args

PAPER_METRICS = {f"{m}@{k}" for m in ("HR", "NDCG") for k in (5, 10, 20)}


@pytest.fixture(scope="module")
def recommender(tiny_dataset, uninterrupted):
    return Recommender.load(uninterrupted, data_dir=tiny_dataset / "data")


def test_tensorboard_has_every_epoch_and_the_config(uninterrupted):
    scalars = tensorboard_scalars(uninterrupted)
    history = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    for tag in ("loss/total", "loss/rec", "loss/kd", "valid/NDCG_20", "test/HR_5", "test/MRR",
                "seconds/train", "seconds/eval", "throughput/train_targets_per_second"):
        assert [step for step, _ in scalars[tag]] == list(range(1, EPOCHS + 1)), tag
    assert [v for _, v in scalars["valid/NDCG_20"]] == pytest.approx(
        [r["valid"]["NDCG@20"] for r in history])
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(uninterrupted / "tensorboard"))
    events.Reload()
    hparams = events.PluginTagToContent("hparams")  # the config, as hyperparameters
    assert "_hparams_/session_start_info" in hparams


def test_recommend_for_users_equals_the_evaluation_ranking(recommender):
    dataset = recommender.dataset
    data = build_sequence_data(dataset, recommender.config.model.max_len)
    model = MQSA(recommender.config.model, dataset.num_items)
    inputs, labels, history = data.eval_rows("test")
    states = model.encode_last(recommender.params, inputs)
    ranks = np.minimum(20, np.asarray(label_ranks(
        states, item_table(recommender.params), jnp.asarray(labels), jnp.asarray(history),
        dataset.num_items)))
    items, _ = recommender.topk_for_users(dataset.user_ids.tolist(), k=20)
    for user, top in enumerate(items):
        label = dataset.item_ids[labels[user]]
        assert (top.index(label) if label in top else 20) == ranks[user]
        assert not set(top) & set(dataset.item_ids[history[user][
            history[user] < dataset.num_items]].tolist())


def test_full_history_includes_the_last_item(recommender):
    users = recommender.dataset.user_ids.tolist()[:5]
    items, scores = recommender.topk_for_users(users, k=6, full_history=True)
    whole = recommender.full_histories(recommender.user_index(users))
    expected = recommender.topk([h.tolist() for h in whole], k=6)
    assert (items, scores) == expected
    for top, history in zip(items, whole):  # the test item is history now: never recommended
        assert not set(top) & set(recommender.dataset.item_ids[history].tolist())


def test_python_api_batches_histories(recommender):
    known, _ = recommender.item_indices(["3", "4", "5"])
    one, one_scores = recommender.topk([known], k=5)
    many, _ = recommender.topk([known, known[:1], known], k=5)
    assert many[0] == one[0] == many[2] and len(many) == 3
    assert one_scores[0] == sorted(one_scores[0], reverse=True)
    assert not set(one[0]) & {"3", "4", "5"}
    kept, _ = recommender.topk([known], k=recommender.num_items, exclude_history=False)
    assert len(kept[0]) == recommender.num_items


def _histories(recommender, count, seed=0):
    rng = np.random.default_rng(seed)
    ids = recommender.dataset.item_ids
    return [ids[rng.integers(0, len(ids), rng.integers(1, 30))].tolist() for _ in range(count)]


def test_a_file_of_histories_compiles_once_and_equals_one_at_a_time(recommender, tmp_path):
    histories = _histories(recommender, 700)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "history": h}) + "\n"
                              for i, h in enumerate(histories)))
    lowered = []

    def count_lowerings(event, seconds, **_):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    jax.monitoring.register_event_duration_secs_listener(count_lowerings)
    try:
        counts = recommend_file(recommender, source, tmp_path / "out.jsonl", k=5,
                                batch_size=128)
    finally:
        jax.monitoring.unregister_event_duration_listener(count_lowerings)
    assert len(lowered) == 1  # six batches, the last one short: one shape
    assert counts == {"lines": 700, "written": 700, "skipped_lines": 0, "skipped_items": 0}
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == list(range(700))
    for line, history in list(zip(lines, histories))[::50]:
        known, _ = recommender.item_indices(history)
        items, scores = recommender.topk([known], k=5)
        assert line["items"] == items[0]
        assert line["scores"] == pytest.approx(scores[0], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("line, message", [
    ("{not json", "in.jsonl:2: not JSON"),
    ('{"history": ["3"]}', 'in.jsonl:2: expected {"id": ..., "history": [item ids]}'),
    ('{"id": 1, "history": []}', "in.jsonl:2: expected"),
    ('{"id": 1, "history": ["3", "999"]}', "in.jsonl:2: unknown item ids: 999"),
])
def test_bad_lines_name_their_line_or_are_counted(tiny_dataset, uninterrupted, capsys, tmp_path,
                                                 line, message):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "history": ["3", "4"]}\n' + line + "\n")
    data = ["--data-dir", str(tiny_dataset / "data")]
    code, out, err = run_cli(capsys, "recommend", str(uninterrupted), *data, "--input",
                             str(source), "--output", str(tmp_path / "out.jsonl"))
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
    code, out, _ = run_cli(capsys, "recommend", str(uninterrupted), *data, "--input",
                           str(source), "--output", str(tmp_path / "out.jsonl"),
                           "--skip-unknown")
    summary = json.loads(out)
    assert summary["compiled_shapes"] <= 1
    assert code == 0 and summary["lines"] == 2 and summary["written"] + summary[
        "skipped_lines"] == 2 and summary["per_second"] > 0
    unknown_only = "999" in line
    assert summary["skipped_items"] == int(unknown_only)
    assert summary["written"] == 1 + unknown_only


def test_a_missing_or_undecodable_input_is_one_line(tiny_dataset, uninterrupted, capsys,
                                                    tmp_path):
    data = ["--data-dir", str(tiny_dataset / "data")]
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"id": "é", "history": ["3"]}\n'.encode("latin-1"))
    for source, message in ((tmp_path / "missing.jsonl", "missing.jsonl: no such file"),
                            (latin, "latin.jsonl: not UTF-8 text")):
        code, out, err = run_cli(capsys, "recommend", str(uninterrupted), *data, "--input",
                                 str(source), "--output", str(tmp_path / "out.jsonl"))
        assert code == 2 and out == "" and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "out.jsonl").exists()


def test_all_users_and_the_cli(tiny_dataset, uninterrupted, recommender, capsys, tmp_path):
    data = ["--data-dir", str(tiny_dataset / "data")]
    code, out, _ = run_cli(capsys, "recommend", str(uninterrupted), *data, "--all-users",
                           "--output", str(tmp_path / "all.jsonl"), "--k", "3")
    assert code == 0 and json.loads(out)["users"] == recommender.dataset.num_users
    lines = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == recommender.dataset.user_ids.tolist()
    code, out, _ = run_cli(capsys, "recommend", str(uninterrupted), *data, "--user", "7",
                           "--full-history", "--k", "3")
    assert code == 0 and json.loads(out)["items"] == lines[
        recommender.user_index(["7"])[0]]["items"]
    code, out, _ = run_cli(capsys, "recommend", str(uninterrupted), *data, "--history", "3,999",
                           "--skip-unknown", "--k", "4")
    result = json.loads(out)
    assert code == 0 and result["skipped"] == ["999"] and len(result["items"]) == 4


@pytest.mark.parametrize("args, message", [
    (("--history", "3,4", "--k", "1000"), "k = 1000: expected 1 to"),
    (("--history", ","), "--history: empty"),
    (("--history", "3,x"), "item ids must be integers for this dataset: x"),
    (("--history", "3,999"), "unknown item ids: 999 (pass --skip-unknown"),
    (("--user", "nobody"), "unknown user ids: nobody"),
    ((), "give exactly one of --history"),
    (("--all-users",), "--output FILE goes with --input or --all-users"),
    (("--history", "3", "--full-history"), "--full-history goes with --user"),
])
def test_recommend_bad_input(tiny_dataset, uninterrupted, capsys, args, message):
    code, out, err = run_cli(capsys, "recommend", str(uninterrupted), "--data-dir",
                             str(tiny_dataset / "data"), *args)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_the_exported_scorer_runs_without_mqsa_jax(tiny_dataset, uninterrupted, recommender,
                                                   capsys, tmp_path):
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "export", str(uninterrupted), str(out), "--data-dir",
                         str(tiny_dataset / "data"), "--k", "7", "--user-vectors")
    assert code == 0
    exported = np.load(out / "item_embeddings.npz")
    assert exported["item_embeddings"].shape == (40, 64)
    assert exported["item_ids"].tolist() == [str(i) for i in range(40)]
    histories = [[int(i) for i in h] for h in _histories(recommender, 9, seed=1)]
    query = tmp_path / "histories.json"
    query.write_text(json.dumps(histories))
    done = subprocess.run([sys.executable, str(REPO / "tests" / "workers" / "load_scorer.py"),
                           str(out), str(query)], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert loaded["mqsa_jax_imported"] is False
    for history, got in zip(histories, loaded["items"]):
        known, _ = recommender.item_indices([str(i) for i in history])
        items, _ = recommender.topk([known], k=7)
        assert got == items[0]
    vectors = np.load(out / "user_vectors.npz")
    assert vectors["user_ids"].tolist() == recommender.dataset.user_ids.tolist()
    items, offsets = full_sequences(recommender.dataset)
    user = 3
    expected = recommender.model.encode_last(recommender.params, jnp.asarray(
        [np.pad(items[offsets[user]:offsets[user + 1]][-16:], (16, 0),
                constant_values=40)[-16:]]))
    np.testing.assert_allclose(vectors["vectors"][user], expected[0], rtol=1e-5, atol=1e-6)


def test_ranks_give_the_results_and_eval_options(tiny_dataset, uninterrupted, capsys, tmp_path):
    data = ["--data-dir", str(tiny_dataset / "data")]
    code, out, _ = run_cli(capsys, "evaluate", str(uninterrupted), *data, "--ranks",
                           str(tmp_path / "ranks.jsonl"))
    assert code == 0
    results = json.loads((uninterrupted / "results.json").read_text())
    assert set(results["test"]) == PAPER_METRICS | {"MRR"}  # the paper's protocol, and MRR
    lines = [json.loads(x) for x in (tmp_path / "ranks.jsonl").read_text().splitlines()]
    for split in ("valid", "test"):
        ranks = np.array([x[split] if x[split] is not None else np.inf for x in lines])
        for k in (5, 10, 20):
            assert np.mean(ranks <= k) == pytest.approx(results[split][f"HR@{k}"])
            assert np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0)) == pytest.approx(
                results[split][f"NDCG@{k}"])
        assert np.mean(1 / ranks) == pytest.approx(results[split]["MRR"])
    # Other cut-offs and another selection metric.
    run = tmp_path / "options"
    code, out, err = run_cli(capsys, "train", *tiny_train_args(tiny_dataset, run), "--epochs",
                             "3", "--set", "eval_ks=1,3", "--set", "selection_metric=HR@3")
    assert code == 0, err
    results = json.loads(out)
    assert set(results["valid"]) == {"HR@1", "NDCG@1", "HR@3", "NDCG@3", "MRR"}
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: (r["valid"]["HR@3"], -r["epoch"]))
    assert results["best_epoch"] == best["epoch"]
    code, _, err = run_cli(capsys, "train", *tiny_train_args(tiny_dataset, tmp_path / "bad"),
                           "--set", "selection_metric=HR@50")
    assert code == 2 and "selection_metric must be one of HR@5, NDCG@5" in err
