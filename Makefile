# The two commands of the README: `make train DATASET=beauty` and `make test`.
# Each creates the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= beauty
EPOCHS ?=
RUN_DIR ?=
CONFIG ?= experiments/configs/mqsa_ted.py:$(DATASET)

.PHONY: venv train test bench datasets clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("mqsa-jax needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

train: venv
	$(BIN)/mqsa-jax train --config $(CONFIG) --dataset $(DATASET) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(RUN_DIR),--run-dir $(RUN_DIR))

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python experiments/bench.py

# Regenerates the committed datasets from the authors' release (checksums verified).
datasets: venv
	$(BIN)/mqsa-jax data convert-release ../shared/data/mqsa-ted-release

clean:
	rm -rf $(VENV) build *.egg-info
