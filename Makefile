# Two commands matter: `make demo` (the incident, end to end) and `make test` (the suite).
# Both build .venv from pyproject.toml when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_VISITS ?= 1000000

.PHONY: demo test lint format bench bench-small clean-db venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py incident_demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m benchmarks.run --visits $(BENCH_VISITS)

bench-small: $(STAMP)
	$(PY) -m benchmarks.run --visits 10000 --runs 1

clean-db:
	rm -rf .pgdata
