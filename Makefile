# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-tools bench backtests lint clean fuzz soak failover

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py builds the compiled store (riskd/feeds/polymarket/_*.c): a change to it
# installs again, which rebuilds it in place.
$(STAMP): pyproject.toml setup.py $(wildcard riskd/feeds/polymarket/_*.[ch]) | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,plot,dev,fast]'
	touch $(STAMP)

run: $(STAMP)
	@echo "riskd is installed in $(BIN)/: run '. $(BIN)/activate' to have it on PATH"
	$(BIN)/riskd run -c config/riskd.toml

test: $(STAMP) test-tools
	$(BIN)/python -m pytest -q

# prometheus and promtool for tests/test_monitoring.py, nats-server for
# tests/test_cluster.py: Debian's `prometheus` and `nats-server` packages, installed
# only when missing (as root or with passwordless sudo; CI runs as root).
test-tools:
	@bash scripts/ensure-package.sh prometheus "tests/test_monitoring.py" prometheus promtool
	@bash scripts/ensure-package.sh nats-server "tests/test_cluster.py, tests/test_nats.py" \
		nats-server

# Failover figures (docs/scaling.md): two replicas, the leader killed 20 times.
failover: $(STAMP) test-tools
	$(BIN)/python scripts/failover.py $(ARGS)

# Speed figures (docs/performance.md): the backtest, then riskd against a local venue
# (scripts/bench_live.py; ~6 minutes). `make bench ARGS=--quick` for a short run.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(ARGS)

backtests: $(STAMP)
	$(BIN)/python scripts/backtests.py

# The fuzz tests with a larger budget and fresh random examples each run (CI runs a
# fixed, derandomized budget). FUZZ_EXAMPLES per test; failures print a reproducer.
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	RISKD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q \
		--timeout=0 tests/test_fuzz.py

# Not in CI: riskd against a flapping venue and a flapping exchange for SOAK_DURATION
# seconds (default one hour); checks RSS growth and the audit log (docs/reliability.md).
SOAK_DURATION ?= 3600
soak: $(STAMP)
	$(BIN)/python scripts/soak.py --duration $(SOAK_DURATION)

# Lint: ruff's checks and layout, and mypy; `.ci/run` runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check riskd tests scripts
	$(BIN)/ruff format --check riskd tests scripts
	$(BIN)/mypy riskd

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
