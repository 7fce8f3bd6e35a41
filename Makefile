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
REPRODUCE = $(BIN)/python -m experiments.reproduce

.PHONY: venv train test test-scale bench datasets reproduce ablation sweep summary clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("mqsa-jax needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,experiments]'
	touch $@

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
	$(BIN)/python -m experiments.bench $(BENCH_ARGS)

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
	rm -rf $(VENV) build *.egg-info
