# The README's two commands: `make demo` and `make test`. Each sets itself up (virtualenv,
# install) on a machine with only Python >= 3.11 and make.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck bench chaos clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fax-outbox needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,sandbox,embedded,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 4 --dist worksteal $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/faxout demo

lint: $(STAMP)
	$(BIN)/ruff check outbox workers mintfax_sandbox migrations tests bench
	$(BIN)/ruff format --check outbox workers mintfax_sandbox migrations tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Every benchmark in bench/ runs even if an earlier one misses its target, then bench/RESULTS.md
# is written; the exit code says if any missed or failed. BENCH_ARGS=--quick for a rehearsal,
# BENCH_ARGS="--only drain,latency" to re-run some (bench/report.py --help).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/report.py $(BENCH_ARGS)

# The chaos run (tests/chaos/test_chaos.py): 5,000 faxes while everything fails at once, on a
# Postgres and a Redis of its own; under 10 minutes. Figures in bench/results/chaos.json.
chaos: $(STAMP)
	$(BIN)/python -m pytest -m chaos -s -p no:cacheprovider tests/chaos $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/results
