"""Damaged interaction logs: every import ends in success or in one error line with exit code 2,
never a traceback, and a failed import writes nothing under the data directory."""

import json
import random

import pytest

from tests.helpers import run_cli

USERS, ITEMS = 7, 7  # every user rates every item: a 5-core that damage can break


def _events():
    return [(f"u{u}", f"i{(u + k) % ITEMS}", 1000 + 10 * k) for u in range(USERS)
            for k in range(ITEMS)]


GOOD = {
    "csv": "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in _events()),
    "sasrec": "".join(f"{u} {i}\n" for u, i, _ in _events()),
    "recbole": "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{t}\n" for u, i, t in _events()),
}


def _damage(text: str, rng: random.Random) -> bytes:
    """One damaged variant of a good file."""
    data = text.encode()
    lines = text.splitlines(keepends=True)
    kind = rng.randrange(13)
    if kind == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
    if kind == 1:  # truncated anywhere
        return data[:rng.randrange(len(data))]
    if kind == 2:  # bytes flipped
        out = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 3:  # NUL bytes
        out = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            out.insert(rng.randrange(len(out)), 0)
        return bytes(out)
    if kind == 4:  # a field too many or too few
        k = rng.randrange(len(lines))
        sep = "\t" if "\t" in lines[k] else ("," if "," in lines[k] else " ")
        fields = lines[k].rstrip("\n").split(sep)
        fields = fields + ["x"] if rng.random() < 0.5 else fields[:-1]
        lines[k] = sep.join(fields) + "\n"
    elif kind == 5:  # a huge field
        k = rng.randrange(len(lines))
        lines[k] = "z" * rng.choice([1000, 200_000]) + lines[k]
    elif kind == 6:  # mixed line endings
        lines = [line.replace("\n", rng.choice(["\n", "\r\n", "\r"])) for line in lines]
    elif kind == 7:  # an empty column
        k = rng.randrange(len(lines))
        sep = "\t" if "\t" in lines[k] else ("," if "," in lines[k] else " ")
        fields = lines[k].rstrip("\n").split(sep)
        fields[rng.randrange(len(fields))] = ""
        lines[k] = sep.join(fields) + "\n"
    elif kind == 8:  # a timestamp that is not a number
        k = rng.randrange(1, len(lines))
        lines[k] = lines[k].replace("10", rng.choice(["ten", "nan", "inf", "1e999", "0x1"]), 1)
    elif kind == 9:  # the header alone, or nothing at all
        lines = lines[:rng.randrange(2)]
    elif kind == 10:  # Latin-1 text, which is not UTF-8
        return text.replace("i3", "caf\u00e9", 3).encode("latin-1")
    elif kind == 11:  # lines shuffled, some dropped
        rng.shuffle(lines)
        lines = lines[:rng.randrange(len(lines) + 1)]
    else:  # a byte-order mark, blank lines, stray quotes
        lines.insert(rng.randrange(len(lines)), rng.choice(["\n", '"\n', '"a,b\n', "\t\t\n"]))
        return b"\xef\xbb\xbf" + "".join(lines).encode()
    return "".join(lines).encode()


@pytest.mark.parametrize("fmt", list(GOOD))
def test_damaged_logs_end_in_success_or_one_error_line(fmt, tmp_path, capsys):
    rng = random.Random(fmt)
    outcomes = {0: 0, 2: 0}
    for case in range(120):
        data = _damage(GOOD[fmt], rng)
        path = tmp_path / f"log{case}"
        path.write_bytes(data)
        data_dir = tmp_path / f"data{case}"
        code, out, err = run_cli(capsys, "data", "import", str(path), "--format", fmt,
                                 "--name", "fuzz", "--data-dir", str(data_dir))
        context = f"case {case}: {data[:80]!r}"
        assert code in (0, 2), context
        outcomes[code] += 1
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("mqsa-jax: error: "), (context, err)
            assert not data_dir.exists() or not any(data_dir.rglob("*")), context
        else:
            assert json.loads(out)["num_users"] > 0, context
    assert outcomes[0] and outcomes[2] > 60, outcomes  # both outcomes are exercised


def test_a_latin_1_file_names_the_line_and_byte_and_imports_with_its_encoding(tmp_path,
                                                                              capsys):
    path = tmp_path / "log.csv"
    path.write_bytes(GOOD["csv"].replace("i3", "caf\u00e9").encode("latin-1"))
    args = ["data", "import", str(path), "--format", "csv", "--name", "x",
            "--data-dir", str(tmp_path / "data")]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    first = next(n for n, line in enumerate(GOOD["csv"].splitlines(), 1) if "i3" in line)
    assert f"{path}:{first}: byte 0xe9 at column " in err and "--encoding" in err
    code, _, err = run_cli(capsys, *args, "--encoding", "latin-1")
    assert code == 0 and err == f"preparing dataset x in {tmp_path / 'data' / 'tfds'}\n"
    assert run_cli(capsys, "data", "export", "x", str(tmp_path / "out.txt"),
                   "--data-dir", str(tmp_path / "data"))[0] == 0
    assert "caf\u00e9" in (tmp_path / "out.txt").read_text(encoding="utf-8")
    code, _, err = run_cli(capsys, *args[:-1], str(tmp_path / "d2"), "--encoding", "nope")
    assert code == 2 and "--encoding 'nope': not a known text encoding" in err
