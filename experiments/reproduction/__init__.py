"""The paper's reproduction: ``python -m experiments.reproduction.reproduce``; its pieces plan,
run, collect and report the runs."""
