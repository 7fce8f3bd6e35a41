"""The configuration: the reference's hyperparameters and the run's settings, in four parts.

``Config`` holds the dataset and seed, and one frozen part per concern: ``model`` (what
:class:`mqsa_jax.model.MQSA` receives whole), ``loss``, ``train`` (optimisation) and ``eval``.
Every field name is unique across the parts, so a value may be named by its field alone
(``tau``) or with its part (``loss.tau``), in config files and ``--set`` alike.

:func:`resolve` is the one way a run's config is made, by the CLI and the reproduction alike.
Values come, last one winning, from the defaults below (the release's beauty command, the
reference's section Hyperparameters), a resumed run's config, a config file (plain Python
defining ``get_config()`` that returns a dict: :mod:`mqsa_jax.config_files`), and ``--set``.
A field's old name (:data:`RENAMED`) is still read wherever a user or an older run wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from pathlib import Path

from mqsa_jax.config_files import load_config_file
from mqsa_jax.errors import UserError
from mqsa_jax.rundir import RunDir


def _at_least(part, names: Sequence[str], low: int) -> list[str]:
    return [f"{name} must be at least {low}, got {getattr(part, name)}"
            for name in names if getattr(part, name) < low]


def _above_zero(part, names: Sequence[str]) -> list[str]:
    return [f"{name} must be above 0, got {getattr(part, name)}"
            for name in names if not getattr(part, name) > 0]


def _refuse(problems: list[str]) -> None:
    if problems:
        raise UserError(f"invalid config: {problems[0]}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    max_len: int = 50  # T: each training list is cut to its last T items
    hidden: int = 64  # d (num_factor)
    num_blocks: int = 1
    num_heads: int = 1
    dropout: float = 0.5
    windows: tuple[int, ...] = (1, 3)  # one branch per query window: short (1) and long (L)
    window_weights: tuple[float, ...] = (0.5, 0.5)  # fusion weights: (alpha, 1 - alpha)

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
        _refuse(problems + _at_least(self, ("max_len", "hidden", "num_blocks", "num_heads"), 1))


# The operand dtypes the N-wide products may take (mqsa_jax.blocked); they accumulate in float32.
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    lambda_kd: float = 0.1  # weight of the TED distillation term; 0 turns it off
    tau: float = 0.1  # distillation temperature
    time_span: int = 1  # transitions count pairs up to this many steps apart
    l2_reg: float = 1e-4
    # Items per block of the N-wide loss's scan of the catalogue (0: 1,024): memory grows with
    # rows x this, never rows x N.  On a model-split mesh each device scans its own slice.
    item_block: int = 0
    # The N-wide products' operands: float32, or bfloat16 (float32 accumulation and softmax
    # statistics; parameters and Adam stay float32).  README, "Precision", says when to pick it.
    precision: str = "float32"

    def __post_init__(self):
        problems = [] if self.precision in PRECISIONS else [
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"]
        _refuse(problems + _at_least(self, ("time_span",), 1)
                + _at_least(self, ("item_block", "lambda_kd", "l2_reg"), 0)
                + _above_zero(self, ("tau",)))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 1e-3
    batch_size: int = 256
    epochs: int = 200
    # Logical axis name -> mesh axis (``data`` or ``model``), for ``--mesh``: where a batch's
    # rows and the item table's rows go; names not listed (the rest of the parameters) are
    # replicated.  See mqsa_jax.tables for the names.
    logical_axis_rules: tuple[str, ...] = ("batch:data", "item:model")
    # For logs whose epoch takes hours: stop after this many steps (0: no limit), and evaluate
    # and checkpoint every this many steps as well as at each epoch's end (0: epochs only).
    max_steps: int = 0
    eval_every_steps: int = 0
    # A progress line every this many seconds when stderr is not a terminal (0: none).
    log_every_seconds: float = 60.0
    # Warm start: the first parameters from this run directory's best or latest checkpoint,
    # matched item by item (mqsa_jax.warm_start); "": a cold start from the seed.
    init_from: str = ""
    init_checkpoint: str = "best"
    # A new batch shape's compilation in steps of it: its batches run padded on a larger compiled
    # shape until that padding adds up to this (mqsa_jax.step_shapes; 0: no padding).
    compile_cost_steps: float = 20.0

    def __post_init__(self):
        problems = [f"logical_axis_rules: {rule!r} is not LOGICAL:data or LOGICAL:model"
                    for rule in self.logical_axis_rules
                    if len(rule.split(":")) != 2 or rule.split(":")[1] not in ("data", "model")]
        if self.init_checkpoint not in ("best", "latest"):
            problems.append(f"init_checkpoint must be best or latest, got {self.init_checkpoint!r}")
        _refuse(problems + _at_least(self, ("batch_size", "epochs"), 1)
                + _at_least(self, ("max_steps", "eval_every_steps", "log_every_seconds",
                                   "compile_cost_steps"), 0)
                + _above_zero(self, ("learning_rate",)))


def metric_names(ks: Sequence[int]) -> list[str]:
    """The evaluation's metrics, in report order: ``HR@K``, ``NDCG@K`` for each cut-off, ``MRR``."""
    return [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")] + ["MRR"]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # Users per ranking step: their scores stay under glibc's 32 MB mmap threshold (above it each
    # step faulted its buffer in afresh: ranking took 1.75x as long, results/eval_speed.md).
    eval_batch_size: int = 256
    eval_every: int = 1  # evaluate every k epochs (and after the last)
    # Periodic evaluations rank a fixed random sample of this many users (0: all); the final
    # one ranks every user ("all"), or that sample too ("sample": for a log too large to rank
    # every user in a run; `mqsa-jax evaluate` ranks them all from a checkpoint).
    eval_users: int = 0
    final_eval: str = "all"
    patience: int = 0  # stop after this many evaluations without a better valid metric; 0: never
    eval_ks: tuple[int, ...] = (5, 10, 20)  # the cut-offs of HR@K and NDCG@K (MRR has none)
    selection_metric: str = "NDCG@20"  # the valid metric that picks the reported epoch

    def __post_init__(self):
        problems = []
        if not self.eval_ks or any(k < 1 for k in self.eval_ks):
            problems.append(f"eval_ks must be positive cut-offs, got {self.eval_ks}")
        if self.final_eval not in ("all", "sample"):
            problems.append(f"final_eval must be all or sample, got {self.final_eval!r}")
        names = metric_names(self.eval_ks)
        if self.selection_metric not in names:
            problems.append(f"selection_metric must be one of {', '.join(names)}, "
                            f"got {self.selection_metric!r}")
        _refuse(problems + _at_least(self, ("eval_batch_size", "eval_every"), 1)
                + _at_least(self, ("eval_users", "patience"), 0))


PARTS = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "beauty"
    seed: int = 2023
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """Every value by its field name alone: ``{"dataset": ..., "tau": ..., ...}``."""
        values = {"dataset": self.dataset, "seed": self.seed}
        for part in PARTS:
            values.update(dataclasses.asdict(getattr(self, part)))
        return values


# Field name -> (part or None for the top level, type).
_FIELDS = {"dataset": (None, str), "seed": (None, int)}
for _part, _cls in PARTS.items():
    _FIELDS.update({f: (_part, t) for f, t in typing.get_type_hints(_cls).items()})


def _parse_value(key: str, name: str, text: str):
    """``text`` (a ``--set`` value) as field ``name``'s type; ``key`` is how it was named."""
    kind = _FIELDS[name][1]
    is_tuple = typing.get_origin(kind) is tuple
    element = typing.get_args(kind)[0] if is_tuple else kind
    try:
        if is_tuple:
            return tuple(element(v) for v in text.strip("()").split(",") if v.strip())
        return element(text)
    except ValueError:
        expected = f"comma-separated {element.__name__}s" if is_tuple else element.__name__
        raise UserError(f"--set {key}={text}: expected {expected}") from None


# Old name -> new, still read from config files, ``--set`` and the saved configs of older runs.
RENAMED = {"logits_chunk": "item_block"}


def _field_name(key: str, source: str) -> str:
    """``tau`` or ``loss.tau`` -> ``tau``; an unknown or misplaced key is a user error."""
    part, _, name = key.rpartition(".")
    name = RENAMED.get(name, name)
    if name not in _FIELDS or (part and _FIELDS[name][0] != part):
        known = ", ".join(f"{p}.{f}" if p else f for f, (p, _) in _FIELDS.items())
        raise UserError(f"{source}: unknown config key {key!r} (known: {known})")
    return name


def field_type(key: str, source: str) -> tuple[str, type]:
    """The field that ``key`` names (as :func:`build_config` reads keys) and its type; an
    unknown key is a user error that names ``source``."""
    name = _field_name(key, source)
    return name, _FIELDS[name][1]


def _flatten(values: dict, source: str) -> dict:
    """Nested (``{"loss": {"tau": 0.1}}``), dotted or bare keys -> bare field names, typed."""
    flat = {}
    for key, value in values.items():
        if key in PARTS and isinstance(value, dict):
            flat.update(_flatten({f"{key}.{k}": v for k, v in value.items()}, source))
            continue
        name = _field_name(key, source)
        if isinstance(value, str) and _FIELDS[name][1] is not str:
            value = _parse_value(key, name, value)
        flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def build_config(file_values: dict | None = None, overrides: dict | None = None,
                 source: str = "config") -> Config:
    """A validated config from values (nested, dotted or bare keys), ``overrides`` winning."""
    values = {**_flatten(file_values or {}, source), **_flatten(overrides or {}, "--set")}
    parts = {part: cls(**{k: v for k, v in values.items() if _FIELDS[k][0] == part})
             for part, cls in PARTS.items()}
    return Config(**{k: v for k, v in values.items() if _FIELDS[k][0] is None}, **parts)


def parse_overrides(items: Sequence[str]) -> dict:
    """``["tau=0.05", "loss.lambda_kd=0"]`` -> ``{"tau": "0.05", "loss.lambda_kd": "0"}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item}: expected key=value")
        overrides[key.strip()] = value.strip()
    return overrides


def config_from_json(path: Path) -> Config:
    return build_config(json.loads(path.read_text()), source=str(path))


def read_run_config(run_dir: Path) -> Config:
    """The resolved config of an existing run directory (:meth:`RunDir.config_file`)."""
    path = RunDir(run_dir).config_file
    if not path.is_file():
        raise UserError(f"{run_dir}: not a training run directory (no {path.name})")
    try:
        return config_from_json(path)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable run config ({e})") from None


def resolve(config_file: str | None = None, sets: Sequence[str] = (), *,
            resume: Path | None = None, dataset: str | None = None,
            epochs: int | None = None) -> Config:
    """The config of a run, as ``mqsa-jax train`` resolves it.

    Args:
      config_file: ``PATH`` or ``PATH:ARG`` of a config file (``get_config(ARG)``).
      sets: ``key=value`` overrides (``--set``).
      resume: a run directory whose config is the base.
      dataset, epochs: the CLI's shorthands for ``--set dataset=...``, ``--set epochs=...``.

    Returns:
      The validated config; a bad file, key or value raises :class:`UserError`.
    """
    values, source = {}, config_file or "config"
    if resume is not None:
        values, source = read_run_config(resume).flat(), str(RunDir(resume).config_file)
    if config_file:
        path, _, arg = config_file.partition(":")
        values.update(_flatten(load_config_file(Path(path), arg or None), path))
    overrides = parse_overrides(sets)
    if dataset:
        overrides["dataset"] = dataset
    if epochs is not None:
        overrides["epochs"] = str(epochs)
    return build_config(values, overrides, source=source)
