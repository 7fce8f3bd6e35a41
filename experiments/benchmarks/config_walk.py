"""How a run's config travels through the code: the ``mqsa_jax`` modules entered, in order, by
calls that take the config (or one of its parts) as an argument, from ``train.train`` on.
Consecutive calls within one module are one stop; a return is a stop in a module already left.

    python -m experiments.benchmarks.config_walk [--dataset toys] [--steps 2]

A measure of structure (issue 45's walk), traced rather than read: it prints the stops and
writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mqsa_jax import config as config_module
from mqsa_jax.train import train

PARTS = tuple(getattr(config_module, name) for name in
              ("Config", "ModelConfig", "LossConfig", "TrainConfig", "EvalConfig"))
PACKAGE = Path(config_module.__file__).resolve().parent


def walk(dataset: str, steps: int) -> list[tuple[str, str]]:
    """The (module, function) stops of a short run's config."""
    stops = []

    def profile(frame, event, _):
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(str(PACKAGE)):
            return
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(isinstance(frame.f_locals.get(name), PARTS) for name in names):
            module = Path(code.co_filename).resolve().relative_to(PACKAGE).with_suffix("")
            if not stops or stops[-1][0] != module.as_posix():
                stops.append((module.as_posix(), code.co_name))

    config = config_module.resolve(None, [f"dataset={dataset}", f"max_steps={steps}",
                                          "eval_users=256", "final_eval=sample"])
    with tempfile.TemporaryDirectory() as run_dir:
        sys.setprofile(profile)
        try:
            train(config, Path(run_dir), progress=False)
        finally:
            sys.setprofile(None)
    return stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="toys")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    stops = walk(args.dataset, args.steps)
    modules = [module for module, _ in stops]
    returns = sum(module in modules[:i] for i, module in enumerate(modules))
    print(" -> ".join(f"{module}.{function}" for module, function in stops))
    print(f"stops {len(stops)}, modules {len(set(modules))}, returns {returns}, "
          f"most entries of one module {max(modules.count(m) for m in set(modules))}")


if __name__ == "__main__":
    main()
