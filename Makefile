# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench backtests lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,plot,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/riskd run -c config/riskd.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

backtests: $(STAMP)
	$(BIN)/python scripts/backtests.py

lint: $(STAMP)
	$(BIN)/ruff check riskd tests
	$(BIN)/mypy riskd

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
