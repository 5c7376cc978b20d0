# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ORDERS ?= 1000

.PHONY: demo test lint install install-test bench bench-pg clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## The Black Friday checkout, naive vs engine, on embedded SQLite.
demo: $(VENV)/.installed
	$(BIN)/tasker demo black-friday --orders $(ORDERS)

## Lint, type-check and the whole test suite (SQLite and PostgreSQL).
test: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest -q

## Lint, format check and strict type check of the package, the tests and the benchmarks, then
## the import contract that keeps the layers pointing down (pyproject.toml, [tool.importlinter]).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_core.py --store sqlite

bench-pg: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_core.py --store postgresql

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache tasker.db tasker.db-*
