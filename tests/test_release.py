import io
import pickle
import shutil

import numpy as np
import pytest

from mqsa_jax.data import registry
from mqsa_jax.data.dataset import load_store
from mqsa_jax.data.release import RELEASE_DATASETS, convert_release, load_release_file
from mqsa_jax.errors import UserError
from tests.helpers import run_cli


def _npy_with_pickle(payload: bytes) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": "|O", "fortran_order": False, "shape": (5,)}
    )
    return stream.getvalue() + payload


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_unpickler_refuses_other_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.npy"
    path.write_bytes(_npy_with_pickle(pickle.dumps(_Exploit(), protocol=2)))
    with pytest.raises(UserError, match=r"global (posix|os|nt)\.system"):
        load_release_file(path)
    assert not (tmp_path / "pwned").exists()


def test_unpickler_refuses_builtins_eval(tmp_path):
    class Eval:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    path = tmp_path / "evil.npy"
    path.write_bytes(_npy_with_pickle(pickle.dumps(Eval(), protocol=2)))
    with pytest.raises(UserError, match=r"(__builtin__|builtins)\.eval"):
        load_release_file(path)


def test_committed_stores_match_the_release(release_dir):
    for name in RELEASE_DATASETS:
        train, valid, test, num_users, num_items = load_release_file(release_dir / f"{name}.npy")
        stored = load_store(registry.BUILTIN_DIR / f"{name}.npz", name)
        assert (stored.num_users, stored.num_items) == (num_users, num_items)
        for user in (0, num_users // 2, num_users - 1):
            assert stored.train_sequence(user).tolist() == train[user]
            assert stored.valid[user] == valid[user] and stored.test[user] == test[user]


def test_altered_release_file_fails_its_checksum(release_dir, tmp_path, capsys):
    copy = tmp_path / "release"
    shutil.copytree(release_dir, copy)
    (copy / "toys.npy").chmod(0o644)
    data = (copy / "toys.npy").read_bytes()
    (copy / "toys.npy").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "data", "convert-release", str(copy), "--out", str(out))
    assert code == 2
    assert "toys.npy: SHA-256 mismatch" in err and len(err.strip().splitlines()) == 1
    assert not (out / "toys.npz").exists()


def test_truncated_pickle_is_a_clear_error(release_dir, tmp_path):
    data = (release_dir / "beauty.npy").read_bytes()
    path = tmp_path / "beauty.npy"
    path.write_bytes(data[:5000])
    with pytest.raises(UserError, match="corrupt pickle stream"):
        load_release_file(path)


def test_convert_release_reproduces_the_committed_files(release_dir, tmp_path):
    converted = convert_release(release_dir, tmp_path, names=("toys",))
    assert converted[0].statistics()["num_interactions"] == 167597
    ours = dict(np.load(tmp_path / "toys.npz"))
    committed = dict(np.load(registry.BUILTIN_DIR / "toys.npz"))
    assert ours.keys() == committed.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], committed[key])
