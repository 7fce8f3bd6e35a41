"""The temporal split: hand-computed expectations on a small timestamped log."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from mqsa_jax.config import ModelConfig
from mqsa_jax.data import registry
from mqsa_jax.data.arrays import build_sequence_data
from mqsa_jax.data.dataset import full_sequences, load_store, save_store
from mqsa_jax.data.from_log import parse_cutoff
from mqsa_jax.data.importers import read_csv
from mqsa_jax.evaluation import RankingEvaluator
from mqsa_jax.model import MQSA
from tests.helpers import run_cli

# (user, item, time).  Cut at 10, k = 2 on the events before it:
# - u6's one event (e@5) and d, seen once before the cut (u3's d@6), fall to the k-core, though
#   d is seen again after it (u1's d@12): the filter counts the training part alone;
# - u1: valid a@11, then d@12 is skipped (not in the catalogue), test b@13; c@14 is unused;
# - u2: valid b@15, no test; u3: training-only; u4: no event before the cut, dropped;
# - u5: valid c, test a.
EVENTS = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "a", 11), ("u1", "d", 12),
          ("u1", "b", 13), ("u1", "c", 14), ("u2", "b", 1), ("u2", "c", 2), ("u2", "b", 15),
          ("u3", "a", 4), ("u3", "c", 5), ("u3", "d", 6), ("u4", "e", 20), ("u4", "a", 21),
          ("u5", "b", 3), ("u5", "a", 6), ("u5", "a", 13), ("u5", "c", 12), ("u6", "e", 5)]


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n"
                    + "".join(f"{u},{i},{t}\n" for u, i, t in EVENTS))
    return path


def _import(capsys, log_file, *extra):
    root = log_file.parent / "data"
    code, out, err = run_cli(capsys, "data", "import", str(log_file), "--format", "csv",
                             "--name", "shop", "--min-count", "2", "--data-dir", str(root),
                             *extra)
    return code, out, err, root


def test_the_split_by_hand(capsys, log_file):
    code, out, err, root = _import(capsys, log_file, "--split", "temporal", "--cutoff", "10")
    assert code == 0, err
    summary = json.loads(out)
    dataset = registry.load_dataset("shop", root)
    assert dataset.user_ids.tolist() == ["u1", "u2", "u3", "u5"]
    assert dataset.item_ids.tolist() == ["a", "b", "c"]
    assert [dataset.train_sequence(u).tolist() for u in range(4)] == [
        [0, 1, 2], [1, 2], [0, 2], [1, 0]]
    assert dataset.valid.tolist() == [0, 1, -1, 2]
    assert dataset.test.tolist() == [1, -1, -1, 0]
    assert dataset.split == {"kind": "temporal", "cutoff": 10.0}
    assert summary["events_before_cutoff"] == 11 and summary["events_after_cutoff"] == 9
    assert summary["k_core"]["events_removed"] == 2
    assert (summary["users_with_valid"], summary["users_with_test"],
            summary["training_only_users"], summary["events_after_cutoff_used"]) == (3, 2, 1, 5)
    assert summary["num_interactions"] == 9 + 5
    code, out, _ = run_cli(capsys, "data", "info", "shop", "--data-dir", str(root))
    assert json.loads(out)["split"] == {"kind": "temporal", "cutoff": 10.0}
    # Histories to recommend from hold each user's targets after its training items.
    items, offsets = full_sequences(dataset)
    assert [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [
        [0, 1, 2, 0, 1], [1, 2, 1], [0, 2], [1, 0, 2, 0]]


def test_a_split_ranks_only_users_with_its_target(capsys, log_file):
    root = _import(capsys, log_file, "--split", "temporal", "--cutoff", "10")[3]
    data = build_sequence_data(registry.load_dataset("shop", root), max_len=4)
    model = MQSA(ModelConfig(max_len=4, hidden=8), data.num_items)
    params = nn.meta.unbox(model.init(jax.random.key(0), np.full((1, 4), data.num_items),
                                      deterministic=True))
    evaluators = {split: RankingEvaluator(split, data, model.encode_last, 8)
                  for split in ("valid", "test")}
    assert evaluators["valid"].users.tolist() == [0, 1, 3]
    assert evaluators["test"].users.tolist() == [0, 3]
    for evaluator in evaluators.values():
        ranks = evaluator.ranks(params)
        hr = evaluator.evaluate(params)["HR@5"]  # 3 items: every findable label is in the top 5
        assert hr == pytest.approx(np.mean(ranks < data.num_items))


def test_leave_one_out_is_the_default_and_older_stores_read_as_it(capsys, log_file, tmp_path):
    code, _, err, root = _import(capsys, log_file)
    assert code == 0, err
    dataset = registry.load_dataset("shop", root)
    assert dataset.split == {"kind": "leave_one_out"} and (dataset.test >= 0).all()
    # A store written before the split was recorded has no split array.
    store = registry.imported_store("shop", root)
    with np.load(store) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "split"}
    np.savez(tmp_path / "old.npz", **arrays)
    assert load_store(tmp_path / "old.npz", "old").split == {"kind": "leave_one_out"}
    save_store(dataset, tmp_path / "again.npz")
    assert load_store(tmp_path / "again.npz", "again").split == dataset.split


def test_the_cutoff_may_be_a_share_of_the_range_or_a_date():
    log = read_csv_times([1, 21])
    assert parse_cutoff("50%", log) == 11.0 and parse_cutoff("10", log) == 10.0
    dated = read_csv_times([1.4e9, 1.5e9])
    assert parse_cutoff("2014-06-01", dated) == 1401580800.0
    assert parse_cutoff("2014-06-01T02:00:00+02:00", dated) == 1401580800.0


def read_csv_times(times):
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "t.csv"
        path.write_text("user_id,item_id,timestamp\n"
                        + "".join(f"u,i{k},{t}\n" for k, t in enumerate(times)))
        return read_csv(path)


@pytest.mark.parametrize("extra, message", [
    (("--split", "temporal", "--cutoff", "1"), "--cutoff 1: outside the log's time range "
                                               "(1 to 21)"),
    (("--split", "temporal", "--cutoff", "22"), "--cutoff 22: outside the log's time range"),
    (("--split", "temporal", "--cutoff", "soon"), "--cutoff soon: expected a time"),
    (("--split", "temporal"), "--split temporal needs --cutoff TIME"),
    (("--cutoff", "10"), "--cutoff needs --split temporal"),
    (("--split", "temporal", "--cutoff", "20.5"), "no training user has an event after the "
                                                  "cutoff (20.5)"),
    (("--split", "temporal", "--cutoff", "14.5"), "no training user has two events after"),
])
def test_bad_cutoffs_are_one_line_exit_2_and_write_nothing(capsys, log_file, extra, message):
    code, out, err, root = _import(capsys, log_file, *extra)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
    assert not registry.imported_store("shop", root).exists()


def test_a_run_trains_on_it_and_ranks_only_the_targets_users_have(capsys, log_file):
    root = _import(capsys, log_file, "--split", "temporal", "--cutoff", "10")[3]
    run = log_file.parent / "run"
    code, _, err = run_cli(capsys, "train", "--dataset", "shop", "--data-dir", str(root),
                           "--run-dir", str(run), "--no-progress", "--set", "max_len=4",
                           "--set", "hidden=8", "--set", "max_steps=1")
    assert code == 0, err
    ranks = log_file.parent / "ranks.jsonl"
    code, out, err = run_cli(capsys, "evaluate", str(run), "--data-dir", str(root),
                             "--ranks", str(ranks))
    assert code == 0, err
    lines = {line["user"]: set(line) - {"user"} for line in map(json.loads, ranks.open())}
    assert lines == {"u1": {"valid", "test"}, "u2": {"valid"}, "u3": set(),
                     "u5": {"valid", "test"}}
