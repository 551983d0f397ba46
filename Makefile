# The two commands: `make study` (the default search study) and `make test` (the whole test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: study test lint clean-runs package

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(MAKE) package VENV=$(VENV)
	touch $(STAMP)

# The package itself, editable (the venv's `kdstudy` command runs this checkout's code); its dependencies are
# requirements.txt's, installed above, and so is the setuptools that builds it (no download here).
package:
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

# A real search study on the embedded digits data set: Ray Tune + Optuna, baselines as trials, confirmation seeds,
# Pareto table, verdicts and report.
study: $(STAMP)
	$(BIN)/python -m study run search_spaces/demo.yaml --name demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff on the tree, mypy on the package (settings in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean-runs:
	rm -rf runs out
