# Two commands matter: `make demo` (the incident, end to end) and `make test` (the suite).
# Both build .venv from pyproject.toml when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_VISITS ?= 1000000

.PHONY: demo test test-psycopg2 lint format bench bench-small clean-db venv

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
	$(PY) -m benchmarks.run --visits 10000 --runs 1 --out benchmarks/results/benchmarks-small.md

clean-db:
	rm -rf .pgdata

# The host runs psycopg2: run the ledger's tests in a second environment that has psycopg2
# instead of psycopg 3 (same pins otherwise, read from pyproject.toml).
VENV2 := .venv-psycopg2
PSYCOPG2 := psycopg2-binary==2.9.13

$(VENV2)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV2)
	$(VENV2)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] \
	if not d.startswith('psycopg')))" > $(VENV2)/requirements.txt
	$(VENV2)/bin/python -m pip install --quiet -r $(VENV2)/requirements.txt "$(PSYCOPG2)"
	$(VENV2)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-psycopg2: $(VENV2)/.installed
	$(VENV2)/bin/python -c "import importlib.util as u; assert not u.find_spec('psycopg'), 'psycopg 3 present'"
	$(VENV2)/bin/python -m pytest tests/ledger tests/audit $(PYTEST_ARGS)
