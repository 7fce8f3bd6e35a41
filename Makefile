# The two commands of the README: `make train DATASET=beauty` and `make test`.
# Each creates the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= beauty
EPOCHS ?=
RUN_DIR ?=
CONFIG ?= experiments/configs/mqsa_ted.py:$(DATASET)
DATASETS ?= beauty toys sports yelp
SEEDS ?= 2023 2024 2025
PARAM ?= L
VALUES ?=
REPRODUCE = $(BIN)/python -m experiments.reproduction.reproduce
# The versions the suite last passed with: `make venv` installs these, not whatever is newest.
LOCK := constraints.txt
LOCK_VENV := .venv-lock

.PHONY: venv lock train test test-scale bench datasets reproduce ablation sweep summary clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; sys.exit("mqsa-jax needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[test,experiments]'
	touch $@

# Refreshes the lock: the newest versions pyproject.toml allows, installed in a fresh
# environment, written to $(LOCK) only when ruff and the suite pass with them.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[test,experiments]'
	$(LOCK_VENV)/bin/ruff check .
	$(LOCK_VENV)/bin/python -m pytest -n 2 -m "not scale" -p no:cacheprovider
	{ echo "# The versions the test suite last passed with: $$(date +%F), Python \
	$$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# \`make venv\` installs these (pip constraints); \`make lock\` refreshes them."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

train: venv
	$(BIN)/mqsa-jax train --config $(CONFIG) --dataset $(DATASET) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(RUN_DIR),--run-dir $(RUN_DIR))

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -m "not scale"

# Tests too long for `make test`'s 10 minutes on two cores: real catalogues on 8 devices, two
# processes stopped by SIGTERM, the accelerator check's dry run.
test-scale: venv
	$(BIN)/python -m pytest -n 2 -m scale

bench: venv
	$(BIN)/python -m experiments.benchmarks.bench $(BENCH_ARGS)

# The paper's comparison (MQSA-TED, SASRec, MQSA without TED), its ablations and its sweeps;
# each resumes where an interrupted one stopped.  Results: experiments/results/summary.md.
reproduce: venv
	$(REPRODUCE) main --datasets $(DATASETS) --seeds $(SEEDS)

ablation: venv
	$(REPRODUCE) ablation --datasets $(DATASETS) --seeds $(SEEDS)

sweep: venv
	$(REPRODUCE) sweep $(PARAM) --datasets $(DATASETS) --seeds $(SEEDS) \
		$(if $(VALUES),--values $(VALUES))

summary: venv
	$(REPRODUCE) summary

# Regenerates the committed datasets from the authors' release (checksums verified).
datasets: venv
	$(BIN)/mqsa-jax data convert-release ../shared/data/mqsa-ted-release

clean:
	rm -rf $(VENV) $(LOCK_VENV) build *.egg-info
