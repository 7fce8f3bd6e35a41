#!/usr/bin/env bash
# The accelerator check as one command of at most 8 minutes, on a machine without network:
#   bash experiments/benchmarks/accelerator/run.sh OUT [--dry-run]
# It installs what the machine lacks from .whl/ (experiments/benchmarks/accelerator/prepare.sh
# fetched it here; carry it), runs check.py (the figures; see its docstring), then the test suite with the
# time that is left.  Everything lands in OUT: accelerator.{json,md}, install.log, check.log,
# tests.log.  --dry-run: no install, a small check, and one test module: for a CPU, here.
set -uo pipefail
cd "$(dirname "$0")/../../.."
out=${1:?usage: run.sh OUT [--dry-run]}
dry=${2:-}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export MQSA_DATA_DIR=${MQSA_DATA_DIR:-$(mktemp -d)}
start=$(date +%s)
if [ "$dry" != --dry-run ]; then
    grep -v '^#' experiments/benchmarks/accelerator/requirements.txt \
        | xargs "$python" -m pip install --no-index --find-links .whl --no-deps \
        > "$out/install.log" 2>&1 || echo "install failed: see install.log"
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
timeout 330 "$python" -m experiments.benchmarks.accelerator.check "$out" $dry > "$out/check.log" 2>&1 \
    || echo "check.py stopped (exit $?): see check.log"
left=$(( 470 - ($(date +%s) - start) ))
if [ "$dry" = --dry-run ]; then
    tests=(tests/test_io.py)
else
    tests=(tests)
fi
timeout $(( left > 30 ? left : 30 )) "$python" -m pytest -q -p no:cacheprovider "${tests[@]}" \
    > "$out/tests.log" 2>&1
echo "tests: exit $? ($(tail -1 "$out/tests.log"))"
echo "accelerator check: $(( $(date +%s) - start )) s; figures in $out/accelerator.md"
