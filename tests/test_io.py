"""Atomic outputs: the old file or the new one, never a partial one or a stray temporary; JSON
lines read back without a line still being appended."""

import json
import stat

import pytest

from mqsa_jax.io import atomic_output, read_json_lines, write_json_atomic, write_text_atomic


def test_replaces_the_file_and_leaves_only_it(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(path) as f:
            f.write(b"half of the n")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_json_lines_are_read_without_a_line_still_being_appended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "val')
    assert read_json_lines(path) == [{"epoch": 1}, {"epoch": 2}]
