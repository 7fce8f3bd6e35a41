"""One configuration dataclass: the reference's hyperparameters and the run's settings.

Values come, last one winning, from the defaults below (the release's beauty command, the
reference's section Hyperparameters), a config file (plain Python defining ``get_config()``
that returns a dict, as in ``experiments/configs/``), and ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import typing
from pathlib import Path

from mqsa_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "beauty"
    # Model.
    max_len: int = 50  # T: each training list is cut to its last T items
    hidden: int = 64  # d (num_factor)
    num_blocks: int = 1
    num_heads: int = 1
    dropout: float = 0.5
    windows: tuple[int, ...] = (1, 3)  # one branch per query window: short (1) and long (L)
    window_weights: tuple[float, ...] = (0.5, 0.5)  # fusion weights: (alpha, 1 - alpha)
    # Losses.
    lambda_kd: float = 0.1  # weight of the TED distillation term; 0 turns it off
    tau: float = 0.1  # distillation temperature
    time_span: int = 1  # transitions count pairs up to this many steps apart
    l2_reg: float = 1e-4
    # Scan the catalogue in chunks of this many items in the N-wide loss, so that memory does not
    # grow with rows x N (for large catalogues); on a model-split mesh each device scans its own
    # slice, logits_chunk / model items at a time.  0: all at once, the fastest when it fits.
    logits_chunk: int = 0
    # Optimisation.
    learning_rate: float = 1e-3
    batch_size: int = 256
    epochs: int = 200
    seed: int = 2023
    # Evaluation.
    eval_batch_size: int = 1024
    eval_every: int = 1  # evaluate every k epochs (and after the last)
    patience: int = 0  # stop after this many evaluations without a better valid NDCG@20; 0: never

    def __post_init__(self):
        problems = []
        if len(self.windows) != len(self.window_weights) or not self.windows:
            problems.append("windows and window_weights need the same, non-zero, length")
        elif abs(sum(self.window_weights) - 1) > 1e-6:
            problems.append(f"window_weights must sum to 1, got {sum(self.window_weights)}")
        if any(w < 1 for w in self.windows):
            problems.append("every window must be at least 1")
        if self.hidden % self.num_heads:
            problems.append(f"hidden ({self.hidden}) must be divisible by num_heads")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("max_len", "hidden", "num_blocks", "num_heads", "batch_size", "epochs",
                     "eval_batch_size", "eval_every", "time_span"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("patience", "logits_chunk", "lambda_kd", "l2_reg"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("tau", "learning_rate"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be above 0, got {getattr(self, name)}")
        if problems:
            raise UserError(f"invalid config: {problems[0]}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def _parse_value(key: str, text: str):
    kind = _TYPES[key]
    is_tuple = typing.get_origin(kind) is tuple
    element = typing.get_args(kind)[0] if is_tuple else kind
    try:
        if is_tuple:
            return tuple(element(v) for v in text.strip("()").split(",") if v.strip())
        return element(text)
    except ValueError:
        expected = f"comma-separated {element.__name__}s" if is_tuple else element.__name__
        raise UserError(f"--set {key}={text}: expected {expected}") from None


def _coerce(key: str, value, source: str):
    if key not in _FIELDS:
        raise UserError(f"{source}: unknown config key {key!r} (known: {', '.join(_FIELDS)})")
    if isinstance(value, str) and _TYPES[key] is not str:
        return _parse_value(key, value)
    if isinstance(value, list):
        value = tuple(value)
    return value


def load_config_file(path: Path, arg: str | None = None) -> dict:
    """Runs ``get_config()`` (or ``get_config(arg)``) of a plain-Python config file."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"mqsa_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # A config file may import its siblings (``from mqsa_ted import get_config``), as variants
    # of one base config do.
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report, do not crash
        raise UserError(f"{path}: cannot load config ({type(e).__name__}: {e})") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"{path}: a config file must define get_config() returning a dict")
    try:
        values = module.get_config() if arg is None else module.get_config(arg)
    except Exception as e:
        raise UserError(
            f"{path}: get_config({arg or ''}) failed ({type(e).__name__}: {e})") from None
    return dict(values)


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item}: expected key=value")
        overrides[key.strip()] = value.strip()
    return overrides


def build_config(file_values: dict | None = None, overrides: dict | None = None,
                 source: str = "config") -> Config:
    values = {}
    for origin, mapping in ((source, file_values or {}), ("--set", overrides or {})):
        for key, value in mapping.items():
            values[key] = _coerce(key, value, origin)
    return Config(**values)


def config_from_json(path: Path) -> Config:
    return build_config(json.loads(path.read_text()), source=str(path))
