#!/usr/bin/env bash
# Fetches the wheels the accelerator machine lacks into .whl/ (ignored by git; the device run
# carries it), for CPython 3.12 on x86-64 Linux.  Run here, with network access:
#   bash experiments/benchmarks/accelerator/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
python=${PYTHON:-.venv/bin/python}
mkdir -p .whl
# promise is published as source only; it is pure Python, so a wheel built here installs there.
"$python" -m pip wheel -q --no-deps --wheel-dir .whl promise
grep -v '^#' experiments/benchmarks/accelerator/requirements.txt | grep -v '^promise$' \
    | xargs "$python" -m pip download -q \
    --dest .whl --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any
du -sh .whl
