"""Config files: plain Python defining ``get_config()`` that returns a dict (as in
``experiments/configs/``), executed as user code: a failure is reported, never raised as a crash.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from mqsa_jax.errors import UserError


def load_config_module(path: Path) -> types.ModuleType:
    """Executes a plain-Python config file; it may import its siblings (``from mqsa_ted import
    get_config``), as variants of one base config do."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"mqsa_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report, do not crash
        raise UserError(f"{path}: cannot load config ({type(e).__name__}: {e})") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def load_config_file(path: Path, arg: str | None = None) -> dict:
    """Runs ``get_config()`` (or ``get_config(arg)``) of a plain-Python config file."""
    module = load_config_module(path)
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"{path}: a config file must define get_config() returning a dict")
    try:
        values = module.get_config() if arg is None else module.get_config(arg)
    except Exception as e:
        raise UserError(
            f"{path}: get_config({arg or ''}) failed ({type(e).__name__}: {e})") from None
    return dict(values)
