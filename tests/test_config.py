"""The configuration: reference defaults, the experiment variants, config files and --set."""

import json
import sys
from pathlib import Path

import pytest

from mqsa_jax.config import Config, build_config, parse_overrides, resolve
from mqsa_jax.config_files import load_config_file
from mqsa_jax.errors import UserError
from tests.helpers import run_cli

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
RESULTS = CONFIGS.parent / "results"
DATASETS = ("beauty", "sports", "toys", "yelp")


def _variant(name: str, dataset: str) -> Config:
    return build_config(load_config_file(CONFIGS / f"{name}.py", dataset))


def test_defaults_are_the_release_beauty_command():
    # The reference's section Hyperparameters, written out here so that a changed default fails.
    reference = dict(learning_rate=1e-3, l2_reg=1e-4, max_len=50, dropout=0.5, windows=(1, 3),
                     window_weights=(0.5, 0.5), lambda_kd=0.1, tau=0.1, hidden=64,
                     batch_size=256, num_blocks=1, num_heads=1, time_span=1, epochs=200)
    assert {k: Config().flat()[k] for k in reference} == reference


@pytest.mark.parametrize("dataset", DATASETS)
def test_variants_differ_from_mqsa_ted_only_where_they_ablate(dataset):
    ted = _variant("mqsa_ted", dataset)
    assert ted == Config(dataset=dataset)
    changed = {name: {k: v for k, v in _variant(name, dataset).flat().items()
                      if v != ted.flat()[k]}
               for name in ("sasrec", "mqsa", "sasrec_ted")}
    assert changed == {
        "sasrec": {"windows": (1,), "window_weights": (1.0,), "lambda_kd": 0.0},
        "mqsa": {"lambda_kd": 0.0},
        "sasrec_ted": {"windows": (1,), "window_weights": (1.0,)},
    }


def test_overrides_win_over_the_file_and_are_typed():
    config = build_config({"tau": 0.2, "windows": [1, 4]},
                          parse_overrides(["tau=0.05", "window_weights=0.3,0.7"]))
    assert config.loss.tau == 0.05 and config.model.windows == (1, 4)
    assert config.model.window_weights == (0.3, 0.7)


def test_a_key_may_name_its_part_and_the_json_is_nested():
    config = build_config({"loss": {"tau": 0.2}}, parse_overrides(["model.hidden=32"]))
    assert config.loss.tau == 0.2 and config.model.hidden == 32
    assert config.to_json()["model"]["hidden"] == 32 and "hidden" not in config.to_json()
    assert build_config(config.to_json()) == config == build_config(config.flat())
    with pytest.raises(UserError, match="unknown config key 'loss.hidden'"):
        build_config({}, parse_overrides(["loss.hidden=32"]))


def test_the_old_name_of_item_block_is_still_read(tmp_path):
    # Config files, --set, and the config.json of runs written before the rename.
    assert build_config({"logits_chunk": 512}).loss.item_block == 512
    assert build_config({}, parse_overrides(["loss.logits_chunk=256"])).loss.item_block == 256
    old_run = json.loads((RESULTS / "beauty" / "mqsa_ted" / "seed2023" / "config.json").read_text())
    old_run["logits_chunk"] = 2048
    (tmp_path / "config.json").write_text(json.dumps(old_run))
    assert resolve(resume=tmp_path) == build_config(old_run)
    assert resolve(resume=tmp_path).loss.item_block == 2048


def test_resolve_layers_the_run_the_file_and_the_overrides(tmp_path):
    base = resolve(f"{CONFIGS}/mqsa.py:toys", ["tau=0.05"], epochs=3)
    assert (base.dataset, base.loss.lambda_kd, base.loss.tau, base.train.epochs) == (
        "toys", 0.0, 0.05, 3)
    (tmp_path / "config.json").write_text(json.dumps(base.to_json()))
    resumed = resolve(sets=["epochs=5"], resume=tmp_path)
    assert resumed.train.epochs == 5 and resumed.loss.tau == 0.05 and resumed.dataset == "toys"


@pytest.mark.parametrize("text, message", [
    ("def get_config():\n    return {'nope': 1}\n", "unknown config key 'nope'"),
    ("x = 1\n", "must define get_config()"),
    ("def get_config():\n    return 1 / 0\n", "get_config() failed (ZeroDivisionError"),
    ("def get_config(:\n", "cannot load config (SyntaxError"),
])
def test_bad_config_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        build_config(load_config_file(path), source=str(path))
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_inconsistent_values_are_refused():
    with pytest.raises(UserError, match="invalid config: window_weights must sum to 1"):
        build_config({"window_weights": (0.6, 0.6)})


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "0", "epochs must be at least 1, got 0"),
    ("batch_size", "-3", "batch_size must be at least 1, got -3"),
    ("learning_rate", "0", "learning_rate must be above 0, got 0.0"),
    ("lambda_kd", "-0.1", "lambda_kd must be at least 0, got -0.1"),
    ("tau", "0", "tau must be above 0, got 0.0"),
    ("precision", "float16", "precision must be one of float32, bfloat16, got 'float16'"),
])
def test_meaningless_values_are_refused(key, value, message):
    with pytest.raises(UserError, match=f"invalid config: {message}$"):
        build_config({}, parse_overrides([f"{key}={value}"]))


def test_train_refuses_zero_epochs_in_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--dataset", "toys", "--epochs", "0",
                             "--run-dir", str(tmp_path / "run"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "epochs must be at least 1, got 0" in err and not (tmp_path / "run").exists()


def test_a_tuned_variant_puts_its_search_best_values_over_the_reference(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="mqsa_ted has no finished search on nowhere yet"):
        load_config_file(CONFIGS / "mqsa_ted_tuned.py", "nowhere")
    monkeypatch.setattr(sys.modules["tuned"], "TUNING", tmp_path)
    best = {"number": 3, "value": 0.05, "params": {"dropout": 0.3, "tau": 0.05}}
    (tmp_path / "yelp_mqsa_ted_best.json").write_text(json.dumps(best))
    tuned = build_config(load_config_file(CONFIGS / "mqsa_ted_tuned.py", "yelp"))
    assert tuned == build_config({**load_config_file(CONFIGS / "mqsa_ted.py", "yelp"),
                                  "dropout": 0.3, "tau": 0.05})
