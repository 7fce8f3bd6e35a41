"""Measurements and probes: each runs as ``python -m experiments.benchmarks.NAME`` and writes its
figures, with the machine, to ``experiments/results/``."""
