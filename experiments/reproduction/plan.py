"""What the reproduction runs: the variants, the sweeps, and where each run lives.

Every run is one ``mqsa-jax train`` of a config file of ``experiments/configs`` at one seed, in
its own run directory under the results folder: ``<dataset>/<variant>/seed<seed>/`` or
``<dataset>/sweep_<param>/<value>/seed<seed>/``.  A sweep point whose config is the reference's
is the ``mqsa_ted`` run itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mqsa_jax.config import Config, resolve
from mqsa_jax.config_files import load_config_module
from mqsa_jax.errors import UserError
from mqsa_jax.rundir import RunDir

HERE = Path(__file__).resolve().parents[1]  # experiments/
CONFIGS = HERE / "configs"
DEFAULT_RESULTS = HERE / "results"
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")

# Variant name -> config file in experiments/configs, and how tables name it.
REFERENCE_VARIANTS = {"sasrec": "SASRec", "sasrec_ted": "SASRec + TED", "mqsa": "MQSA (no TED)",
                      "mqsa_ted": "MQSA-TED"}
# With the values a search on validation found for the dataset (tuning.py); the same budget each.
TUNED_VARIANTS = {"sasrec_tuned": "SASRec, tuned", "mqsa_ted_tuned": "MQSA-TED, tuned"}
VARIANTS = {**REFERENCE_VARIANTS, **TUNED_VARIANTS}
MAIN_VARIANTS = ("mqsa_ted", "sasrec", "mqsa")  # mqsa: for the SASRec < MQSA < MQSA-TED check
ABLATION_VARIANTS = ("sasrec", "mqsa", "sasrec_ted", "mqsa_ted")
ORDERING = ("sasrec", "mqsa", "mqsa_ted")
TUNED_ORDERING = ("sasrec_tuned", "mqsa_ted_tuned")
BASELINE = "sasrec"  # the one baseline we run: the paper compares against its best of several
# What the README's table reports on, started or not, so that it names what is still to run:
# dataset -> variant -> seeds.  The comparison on beauty over three seeds and on toys is the
# minimum of the reproduction, with the SASRec + TED ablation; sports and yelp when time allows.
PLANNED = {"beauty": {**dict.fromkeys(MAIN_VARIANTS, (2023, 2024, 2025)), "sasrec_ted": (2023,)},
           "toys": dict.fromkeys(ABLATION_VARIANTS, (2023,)),
           # SASRec and MQSA-TED with three seeds, with the reference config and tuned (issue 42).
           **{dataset: {**dict.fromkeys(("sasrec", "mqsa_ted", *TUNED_VARIANTS),
                                        (2023, 2024, 2025)), "mqsa": (2023,)}
              for dataset in ("sports", "yelp")}}
PLANNED_SWEEPS = {"beauty": (2023,)}  # dataset -> seeds, for every parameter of SWEEPS
SWEEPS = load_config_module(CONFIGS / "sweep.py").POINTS  # parameter -> its values
@dataclasses.dataclass(frozen=True)
class Run:
    dataset: str
    config_file: str  # a config file of experiments/configs with its argument: "mqsa.py:toys"
    seed: int
    run_dir: Path

    def sets(self, extra: dict) -> list[str]:
        return [f"{k}={v}" for k, v in {"seed": self.seed, **extra}.items()]

    def config(self, extra: dict) -> Config:
        """The config ``mqsa-jax train`` resolves for :meth:`command`."""
        return resolve(f"{CONFIGS / self.config_file}", self.sets(extra))

    def command(self, extra: dict) -> list[str]:
        started = RunDir(self.run_dir).holds_run()
        return (["mqsa-jax", "train", "--config", f"{relative(CONFIGS)}/{self.config_file}",
                 "--no-progress"]
                + [a for s in self.sets(extra) for a in ("--set", s)]
                + (["--resume", relative(self.run_dir)] if started else
                   ["--run-dir", relative(self.run_dir)]))


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def variant_folder(results: Path, dataset: str, variant: str) -> Path:
    """Where a variant's seeds live: a tuned variant whose finished search found the reference
    config itself is the reference variant's runs (the same config and seeds: the same runs)."""
    reference = variant.removesuffix("_tuned")
    if variant in TUNED_VARIANTS:
        try:
            tuned = Run(dataset, f"{variant}.py:{dataset}", 0, Path()).config({})
        except UserError:  # its search is not finished: no config yet, no runs
            return results / dataset / variant
        if tuned == Run(dataset, f"{reference}.py:{dataset}", 0, Path()).config({}):
            return results / dataset / reference
    return results / dataset / variant


def variant_runs(variants, datasets, seeds, results: Path) -> list[Run]:
    # Seeds outermost: every dataset gets a first seed of every variant before any second seed.
    return [Run(d, f"{v}.py:{d}", s, variant_folder(results, d, v) / f"seed{s}")
            for s in seeds for d in datasets for v in variants]


def sweep_point(dataset: str, param: str, value: float) -> str:
    return f"sweep.py:{dataset},{param}={value:g}"


def sweep_folder(results: Path, dataset: str, param: str, value: float) -> Path:
    """Where a sweep point's seeds live: a point whose config is a variant's (the reference
    point is ``mqsa_ted``, lambda_kd = 0 is ``mqsa``) is that variant's run itself."""
    point = Run(dataset, sweep_point(dataset, param, value), 0, Path()).config({})
    for variant in REFERENCE_VARIANTS:
        if point == Run(dataset, f"{variant}.py:{dataset}", 0, Path()).config({}):
            return results / dataset / variant
    return results / dataset / f"sweep_{param}" / f"{value:g}"


def sweep_runs(param: str, datasets, seeds, results: Path, values=None) -> list[Run]:
    """The runs of ``param``'s sweep: every point of :data:`SWEEPS`, or ``values`` (some of
    them, in the order given: the points that decide a claim can run first)."""
    return [Run(d, sweep_point(d, param, v), s, sweep_folder(results, d, param, v) / f"seed{s}")
            for d in datasets for v in (values or SWEEPS[param]) for s in seeds]
