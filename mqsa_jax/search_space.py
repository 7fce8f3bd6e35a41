"""The search space of ``mqsa-jax tune``: a range or a list of values for each config field.

One entry per field, given as ``--param`` or as a line of a ``--space`` file (``#`` comments)::

    NAME=LOW:HIGH          uniform (whole numbers for an integer field)
    NAME=log:LOW:HIGH      log-uniform (LOW > 0)
    NAME=A,B,C             one of these values

NAME is any config field, as ``--set`` names it (``dropout``, ``loss.tau``).  A space is checked
whole before any trial starts: an unknown field, an empty range or a value the config refuses is
a user error.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mqsa_jax.config import build_config, field_type
from mqsa_jax.errors import UserError

if TYPE_CHECKING:  # Optuna is imported by the search alone
    import optuna


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched field: a ``uniform`` or ``log`` range ``[low, high]``, or ``choices``."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> object:
        """The trial's value (an Optuna trial's ``suggest_*``)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     log=self.kind == "log")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")

    def holds(self, value: object) -> bool:
        """Whether ``value`` lies in the range, or is one of the choices."""
        if self.kind == "choice":
            return value in self.choices
        return self.low <= value <= self.high

    def values_to_check(self) -> tuple:
        """The values the config must accept for the whole space to be valid."""
        return self.choices if self.kind == "choice" else (self.low, self.high)

    def spec(self) -> str:
        """The entry as it would be written (how a study records its space)."""
        if self.kind == "choice":
            return f"{self.name}={','.join(str(c) for c in self.choices)}"
        return f"{self.name}={'log:' if self.kind == 'log' else ''}{self.low}:{self.high}"


def parse_param(text: str, source: str = "--param") -> Param:
    """One entry (``dropout=0.1:0.5``); ``source`` names it in errors."""
    where = f"{source} {text}"
    key, sep, spec = text.partition("=")
    if not sep or not spec.strip():
        raise UserError(f"{where}: expected NAME=LOW:HIGH, NAME=log:LOW:HIGH or NAME=A,B,C")
    name, kind = field_type(key.strip(), where)
    if typing.get_origin(kind) is tuple:
        raise UserError(f"{where}: {name} holds several values; tune searches fields of one")
    spec = spec.strip()
    parse = kind if kind in (int, float, str) else str
    try:
        if ":" not in spec:
            return Param(name, "choice", choices=tuple(parse(v.strip()) for v in spec.split(",")))
        log = spec.startswith("log:")
        bounds = spec.removeprefix("log:").split(":")
        if kind not in (int, float) or len(bounds) != 2:
            raise ValueError
        low, high = (kind(b) for b in bounds)
    except ValueError:
        expected = f"{kind.__name__} values" if kind in (int, float) else "values A,B,C"
        raise UserError(f"{where}: expected {expected} (LOW:HIGH, log:LOW:HIGH or A,B,C)"
                        ) from None
    if not low < high:
        raise UserError(f"{where}: empty range (LOW must be below HIGH)")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs LOW above 0")
    return Param(name, "log" if log else "uniform", low, high, integer=kind is int)


def read_space_file(path: Path) -> list[tuple[str, str]]:
    """A ``--space`` file's entries: (entry, ``path:line``)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return [(line.split("#")[0].strip(), f"{path}:{number}")
            for number, line in enumerate(lines, 1) if line.split("#")[0].strip()]


def search_space(params: Sequence[str], space_file: Path | None,
                 base_values: dict) -> list[Param]:
    """The space of ``--param`` entries and a ``--space`` file's, checked against the config
    ``base_values`` (flat, as :meth:`Config.flat` gives them): every bound and choice must make a
    config the config accepts, and no field may come twice."""
    entries = [(text, "--param") for text in params]
    if space_file is not None:
        entries += read_space_file(space_file)
    if not entries:
        raise UserError("tune needs a search space: --param NAME=LOW:HIGH (or --space FILE)")
    space, seen = [], set()
    for text, source in entries:
        param = parse_param(text, source)
        if param.name in seen:
            raise UserError(f"{source} {text}: {param.name} is searched twice")
        seen.add(param.name)
        for value in param.values_to_check():
            try:
                build_config(base_values, {param.name: value})
            except UserError as e:
                raise UserError(f"{source} {text}: {param.name}={value} is refused ({e})"
                                ) from None
        space.append(param)
    return space
