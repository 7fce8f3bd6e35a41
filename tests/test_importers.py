import json
from pathlib import Path

import numpy as np
import pytest

from mqsa_jax.data import events, importers, parquet, registry
from mqsa_jax.data.from_log import build_dataset, dense_ids, k_core
from mqsa_jax.data.importers import Columns, read_csv, read_recbole, read_sasrec
from mqsa_jax.data.release import RELEASE_DATASETS
from tests.helpers import run_cli


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_k_core_needs_several_passes():
    # u1 and u2 both rate a and b: a 2-core.  u4's single event removes u4 (pass 1), which leaves
    # item c with one event (pass 2), which leaves u3 with one event (pass 3).
    events = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"),
              ("u3", "a"), ("u3", "c"), ("u4", "c")]
    users = np.unique([u for u, _ in events], return_inverse=True)[1]
    items = np.unique([i for _, i in events], return_inverse=True)[1]
    keep, passes = k_core(users, items, 2)
    assert keep.tolist() == [True, True, True, True, False, False, False]
    assert passes == 4  # three passes that remove something, one that confirms


def test_k_core_against_a_naive_fixed_point():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 60, 800), rng.zipf(1.6, 800) % 90
    keep, _ = k_core(users, items, 4)
    alive = set(range(800))
    while True:
        uc = {u: sum(users[j] == u for j in alive) for u in set(users[list(alive)])}
        ic = {i: sum(items[j] == i for j in alive) for i in set(items[list(alive)])}
        nxt = {j for j in alive if uc[users[j]] >= 4 and ic[items[j]] >= 4}
        if nxt == alive:
            break
        alive = nxt
    assert set(np.flatnonzero(keep)) == alive


def test_time_order_with_ties_in_file_order(tmp_path):
    path = _write(tmp_path, "log.csv", "user_id,item_id,timestamp\n"
                  "u,i1,5\nu,i2,3\nu,i3,5\nu,i4,5\nu,i5,1\n")
    dataset, _ = build_dataset("x", read_csv(path), min_count=1)
    order = dataset.item_ids[np.concatenate([dataset.train_items, dataset.valid, dataset.test])]
    assert order.tolist() == ["i5", "i2", "i1", "i3", "i4"]


def test_short_users_are_dropped_and_counted(tmp_path):
    path = _write(tmp_path, "log.txt", "1 10\n1 11\n1 12\n2 10\n2 11\n3 10\n")
    dataset, summary = build_dataset("x", read_sasrec(path), min_count=1)
    assert dataset.num_users == 1 and summary["users_dropped_too_short"] == 2
    assert summary["events_dropped_too_short"] == 3
    assert dataset.item_ids.tolist() == ["10", "11", "12"]


def test_integer_ids_sort_by_value_and_strings_as_text():
    assert dense_ids(np.array(["10", "9", "100", "9"]))[0].tolist() == ["9", "10", "100"]
    uniques, codes = dense_ids(np.array(["b", "a", "b"]))
    assert uniques.tolist() == ["a", "b"] and codes.tolist() == [1, 0, 1]


def test_csv_with_string_ids_custom_columns_and_delimiter(tmp_path):
    path = _write(tmp_path, "log.txt", "when;who;what;rating\n" + "".join(
        f"{t};user-{u};sku-{(u + t) % 4};5\n" for u in range(4) for t in range(6)))
    log = read_csv(path, Columns(user="who", item="what", time="when"), delimiter=";")
    dataset, summary = build_dataset("x", log, min_count=3)
    assert dataset.num_users == 4 and dataset.num_items == 4
    assert dataset.user_ids.tolist() == [f"user-{u}" for u in range(4)]
    assert summary["num_interactions"] == 24


def test_recbole_inter_file(tmp_path):
    rows = "".join(f"{u}\t{(u * 7 + k) % 5}\t4.0\t{100 - k}\n" for u in range(5) for k in range(5))
    path = _write(tmp_path, "x.inter",
                  "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + rows)
    dataset, _ = build_dataset("x", read_recbole(path), min_count=5)
    # Timestamps fall with k, so each user's sequence is the file order reversed.
    expected = [(0 * 7 + k) % 5 for k in reversed(range(5))]
    assert dataset.train_sequence(0).tolist() + [dataset.valid[0], dataset.test[0]] == expected


@pytest.mark.parametrize("text, fmt, message", [
    ("", "csv", r"log: empty file, expected a header"),
    ("user,item_id,timestamp\n1,2,3\n", "csv", r"log:1: no column 'user_id' in the header"),
    ("user_id,item_id,timestamp\n1,2,3\n1,2\n", "csv", r"log:3: expected 3 fields, found 2"),
    ("user_id,item_id,timestamp\n1,2,3\n1,2,noon\n", "csv",
     r"log:3: timestamp 'noon' is not a finite number"),
    ("user_id,item_id,timestamp\n1,2,3\n,2,4\n", "csv", r"log:3: empty user id"),
    ("user_id,item_id,timestamp\n1,2,3\n1, ,4\n", "csv", r"log:3: empty item id"),
    ("user_id,item_id,timestamp\n", "csv", r"log: no events after the header"),
    ("1 2\n1 3 4\n", "sasrec", r"log:2: expected 2 fields 'user item', found 3"),
    ("", "sasrec", r"log: empty file"),
    ("user_id\titem_id\n1\t2\n", "recbole", r"log:1: header field 'user_id' is not of the form"),
    ("1 2\n1 3\n2 2\n", "sasrec", r"log: the 5-core filter removed every event"),
    ("".join(f"u{u % 7} only\n" for u in range(70)), "sasrec",
     r"log: 1 item left after filtering \('only'\); ranking needs at least 2"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text, fmt, message):
    path = _write(tmp_path, "log", text)
    root = tmp_path / "data"
    code, out, err = run_cli(capsys, "data", "import", str(path), "--format", fmt,
                             "--name", "mine", "--data-dir", str(root))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not root.exists() or not any(root.rglob("*.npz"))


def test_unknown_format_and_bad_name(tmp_path, capsys):
    path = _write(tmp_path, "log", "1 2\n")
    code, _, err = run_cli(capsys, "data", "import", str(path), "--format", "xlsx",
                           "--name", "m")
    assert code == 2 and "invalid choice: 'xlsx'" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "data", "import", str(path), "--format", "sasrec",
                           "--name", "Bad Name")
    assert code == 2 and "dataset name 'Bad Name'" in err
    code, _, err = run_cli(capsys, "data", "import", str(path), "--format", "sasrec",
                           "--name", "beauty")
    assert code == 2 and "is a built-in dataset" in err


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "import", str(tmp_path / "none.csv"), "--format", "csv",
                           "--name", "m", "--data-dir", str(tmp_path))
    assert code == 2 and "none.csv: cannot read" in err


def test_imported_dataset_is_usable_by_name(tmp_path, capsys):
    lines = "".join(f"{u} {(u + k) % 7}\n" for u in range(12) for k in range(6))
    path = _write(tmp_path, "log.txt", lines)
    root = tmp_path / "data"
    code, out, _ = run_cli(capsys, "data", "import", str(path), "--format", "sasrec",
                           "--name", "mine", "--data-dir", str(root))
    assert code == 0 and json.loads(out)["num_users"] == 12
    code, out, _ = run_cli(capsys, "data", "list", "--data-dir", str(root))
    assert out.split() == list(RELEASE_DATASETS) + ["mine"]
    code, out, _ = run_cli(capsys, "data", "info", "mine", "--data-dir", str(root))
    assert json.loads(out) == {"name": "mine", "num_users": 12, "num_items": 7,
                               "num_interactions": 72, "avg_seq_len": 6.0,
                               "split": {"kind": "leave_one_out"}}
    code, _, err = run_cli(capsys, "data", "import", str(path), "--format", "sasrec",
                           "--name", "mine", "--data-dir", str(root))
    assert code == 2 and "already exists" in err
    # A re-import replaces the store, and the TFDS copy is rebuilt from the new store.
    path.write_text(lines + "".join(f"99 {k}\n" for k in range(6)))
    code, _, _ = run_cli(capsys, "data", "import", str(path), "--format", "sasrec",
                         "--name", "mine", "--data-dir", str(root), "--replace")
    assert code == 0
    assert registry.load_dataset("mine", root).num_users == 13


@pytest.mark.parametrize("name", RELEASE_DATASETS)
def test_export_then_import_gives_identical_splits(tmp_path, capsys, name):
    path = tmp_path / f"{name}.txt"
    assert run_cli(capsys, "data", "export", name, str(path))[0] == 0
    root = tmp_path / "data"
    code, _, err = run_cli(capsys, "data", "import", str(path), "--format", "sasrec",
                           "--name", "again", "--data-dir", str(root))
    assert code == 0, err
    original, again = registry.load_dataset(name), registry.load_dataset("again", root)
    for key in ("train_items", "train_offsets", "valid", "test", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(original, key), getattr(again, key))
    assert original.num_items == again.num_items


def test_build_dataset_reports_what_the_k_core_removed(tmp_path):
    events = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u2", "c"),
              ("u3", "a"), ("u3", "d"), ("u4", "d")]
    path = _write(tmp_path, "log.txt", "".join(f"{u} {i}\n" for u, i in events))
    dataset, summary = build_dataset("x", read_sasrec(path), min_count=2)
    assert summary["k_core"] == {"min_count": 2, "passes": 4, "events_removed": 3,
                                 "users_removed": 2, "items_removed": 1}
    assert dataset.user_ids.tolist() == ["u1", "u2"]
    assert dataset.item_ids.tolist() == ["a", "b", "c"]


def _log_text(users=9, per_user=7):
    """A CSV log with quoted and padded fields, ties in time, string and integer ids."""
    rows = [f' "u{u}" ,{(u * 3 + k) % 6},{1000 + (k // 2)}\n' for u in range(users)
            for k in range(per_user)]
    return "user_id,item_id,timestamp\n" + "".join(reversed(rows))


@pytest.mark.parametrize("block", [64 << 20, 100])
def test_the_columnar_reader_and_the_exact_reader_give_one_dataset(tmp_path, monkeypatch, block):
    """In one batch, and streamed in batches of about 100 bytes (ids recur across batches)."""
    monkeypatch.setattr(events, "STREAM_BLOCK", block)
    path = _write(tmp_path, "log.csv", _log_text())
    fast = importers._arrow_table(path, ",", lambda _p, h: [x.strip() for x in h], Columns(),
                                  "utf-8")
    assert fast is not None  # the file takes the columnar path
    columnar, columnar_summary = build_dataset("x", read_csv(path), min_count=2)
    monkeypatch.setattr(importers, "_arrow_table", lambda *args: None)
    exact, exact_summary = build_dataset("x", read_csv(path), min_count=2)
    assert columnar_summary == exact_summary
    for key in ("train_items", "train_offsets", "valid", "test", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(columnar, key), getattr(exact, key))


def test_parquet_gives_the_csv_dataset_and_names_the_bad_row(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    csv_path = _write(tmp_path, "log.csv", _log_text().replace('"', "").replace(" ", ""))
    table = pa_csv.read_csv(csv_path)  # integer item ids, as Parquet files often have them
    pq.write_table(table, tmp_path / "log.parquet")
    from_csv, _ = build_dataset("x", read_csv(csv_path), min_count=2)
    from_parquet, _ = build_dataset("x", parquet.read_parquet(tmp_path / "log.parquet"), 2)
    for key in ("train_items", "train_offsets", "valid", "test", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(from_parquet, key), getattr(from_csv, key))
    # String ids, read as dictionaries: padded spellings of one id are one id, as in the CSV.
    users = [f" {u} " if row % 3 else u for row, u in enumerate(table["user_id"].to_pylist())]
    padded = table.set_column(0, "user_id", pa.array(users))
    pq.write_table(padded.set_column(1, "item_id", pc.cast(table["item_id"], pa.string())),
                   tmp_path / "padded.parquet", row_group_size=10)
    from_padded, _ = build_dataset("x", parquet.read_parquet(tmp_path / "padded.parquet"), 2)
    for key in ("train_items", "train_offsets", "valid", "test", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(from_padded, key), getattr(from_csv, key))
    items = table["item_id"].to_pylist()
    items[6] = " "
    pq.write_table(table.set_column(1, "item_id", pa.array([str(i) for i in items])),
                   tmp_path / "empty.parquet", row_group_size=4)
    times = table["timestamp"].to_pylist()
    times[4] = None
    pq.write_table(table.set_column(2, "timestamp", pa.array(times, pa.float64())),
                   tmp_path / "bad.parquet")
    for name, message in (("bad.parquet", "bad.parquet: row 5: timestamp None is not a finite"),
                          ("empty.parquet", "empty.parquet: row 7: empty item id"),
                          ("log.csv", "log.csv: not a readable Parquet file")):
        code, _, err = run_cli(capsys, "data", "import", str(tmp_path / name), "--format",
                               "parquet", "--name", "p", "--data-dir", str(tmp_path / "d"))
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_block_of_records_loads_just_its_users(tmp_path, capsys):
    """Records hold consecutive users; a process reads only the records it asks for."""
    from mqsa_jax.data import tfds_dataset
    from mqsa_jax.data.dataset import load_id_maps

    root = tmp_path / "data"
    whole = registry.load_dataset("toys", root)
    prepared = tfds_dataset.prepared_dir(root / "tfds", "toys")
    per = tfds_dataset.USERS_PER_RECORD
    part = tfds_dataset.load(prepared, "toys", *load_id_maps(registry.store_path("toys", root)),
                             records=[3, 1])
    users = np.r_[per:2 * per, 3 * per:4 * per]
    np.testing.assert_array_equal(part.user_ids, whole.user_ids[users])
    np.testing.assert_array_equal(part.valid, whole.valid[users])
    for k, user in enumerate(users[::97]):
        np.testing.assert_array_equal(part.train_sequence(k * 97), whole.train_sequence(user))


def test_a_million_users_seen_once_is_one_line_and_quick(tmp_path, capsys):
    """Every user of a large log seen once: the 5-core filter leaves nothing, said in one line."""
    import time

    users = np.arange(1_000_000)
    path = tmp_path / "once.csv"
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(
        np.char.add(np.char.add("u", users.astype(str)), ",i1,5").tolist()) + "\n")
    start = time.perf_counter()
    code, out, err = run_cli(capsys, "data", "import", str(path), "--format", "csv",
                             "--name", "once", "--data-dir", str(tmp_path / "data"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "the 5-core filter removed every event (1000000 events)" in err, err
    assert time.perf_counter() - start < 30
