import json
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from mqsa_jax.data import registry, tfds_dataset
from mqsa_jax.data.dataset import load_store, save_store
from tests.helpers import random_dataset, run_cli

# Reference, section Data.
REFERENCE_TABLE = {
    "beauty": (22363, 12101, 198502),
    "sports": (35598, 18357, 296337),
    "toys": (19412, 11924, 167597),
    "yelp": (30431, 20033, 316354),
}


def test_data_info_matches_the_reference_table(capsys):
    for name, (users, items, interactions) in REFERENCE_TABLE.items():
        code, out, _ = run_cli(capsys, "data", "info", name)
        assert code == 0
        info = json.loads(out)
        assert (info["num_users"], info["num_items"], info["num_interactions"]) == (
            users, items, interactions)
        assert info["name"] == name
        assert abs(info["avg_seq_len"] - interactions / users) < 1e-3


def test_tfds_dataset_equals_the_store(data_root):
    through_tfds = registry.load_dataset("toys", data_root)
    store = load_store(registry.BUILTIN_DIR / "toys.npz", "toys")
    for key in ("train_items", "train_offsets", "valid", "test", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(through_tfds, key), getattr(store, key))


def test_tfds_loads_it_directly_without_tensorflow(data_root):
    registry.load_dataset("toys", data_root)
    source = tfds.data_source("mqsa_sequences/toys", data_dir=str(data_root / "tfds"))
    records = source["users"]
    # Records of 1,024 consecutive users each, read by index.
    assert len(records) == tfds_dataset.num_records(19412) == 19
    blocks = [records[i] for i in range(len(records))]
    assert set(blocks[0]) == {"first_user", "lengths", "train", "valid", "test"}
    firsts = sorted(int(b["first_user"]) for b in blocks)
    assert firsts == list(range(0, 19412, tfds_dataset.USERS_PER_RECORD))
    assert sum(len(b["valid"]) for b in blocks) == 19412
    assert all(len(b["train"]) == b["lengths"].sum() for b in blocks)
    builder = tfds.builder_from_directory(
        str(tfds_dataset.prepared_dir(data_root / "tfds", "toys")))
    assert builder.info.metadata["num_items"] == 11924
    assert builder.info.metadata["num_users"] == 19412


def test_data_list_shows_builtins(capsys):
    code, out, _ = run_cli(capsys, "data", "list")
    assert code == 0 and out.split() == ["beauty", "sports", "toys", "yelp"]


def test_unknown_dataset_is_a_one_line_error(capsys):
    code, out, err = run_cli(capsys, "data", "info", "nosuch")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown dataset 'nosuch'" in err


def test_preparing_a_dataset_leaves_no_temporary_folder(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    store = tmp_path / "small.npz"
    save_store(random_dataset(num_users=30), store)
    tfds_dataset.prepare(store, "small", tmp_path / "tfds")
    assert tfds_dataset.read_sequences(tfds_dataset.prepared_dir(tmp_path / "tfds", "small"))
    assert list(scratch.iterdir()) == []
