# The two commands: `make study` (the default search study) and `make test` (the whole test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: study test lint clean-runs

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# A real search study on the embedded digits data set: Ray Tune + Optuna, MO-ASHA, Pareto table and report.
study: $(STAMP)
	$(BIN)/python -m study run search_spaces/demo.yaml --name demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean-runs:
	rm -rf runs out
