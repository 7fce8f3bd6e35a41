"""The accelerator check: prepare.sh here, run.sh there (see check.py)."""
