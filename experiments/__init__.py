"""Reproduction, benchmarks and measurements; each script runs as ``python -m experiments.NAME``."""
