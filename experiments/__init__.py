"""The reproduction (:mod:`experiments.reproduction`) and the benchmarks and probes
(:mod:`experiments.benchmarks`), with their shared configs, reference figures, results and
helpers; each script runs as ``python -m experiments.PACKAGE.NAME``."""
