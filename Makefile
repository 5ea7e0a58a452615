# Two commands matter: `make demo` (the incident, end to end) and `make test` (the suite).
# Both build .venv from requirements/ (pinned) and the ledger itself (editable) when it is missing
# or older than those files.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_VISITS ?= 1000000

REQUIREMENTS := pyproject.toml requirements/standalone.txt requirements/dev.txt

.PHONY: demo test test-psycopg2 test-psycopg2-live lint format bench bench-small bench-e2e bench-e2e-small clean-db venv wheel test-wheel host-test \
	worker worker-stop

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The demo runs on a database of its own (DEMO_DATABASE, default ledger_demo), made and migrated
# when missing, and can be run again. It signs anchors with a throwaway key made for each run
# (never stored) and keeps them in .anchors/, outside the database.
DEMO_DATABASE ?= ledger_demo
demo: $(STAMP)
	@mkdir -p .anchors
	@DATABASE_NAME=$(DEMO_DATABASE) \
	LEDGER_ANCHOR_KEY=$${LEDGER_ANCHOR_KEY:-$$($(PY) -c "import secrets; print(secrets.token_hex(32))")} \
	LEDGER_ANCHOR_LOG=$${LEDGER_ANCHOR_LOG:-.anchors/demo-$$(date +%Y%m%dT%H%M%S).jsonl} \
	$(PY) manage.py incident_demo

# Celery workers for the accrual recomputes: WORKERS processes on a Redis broker — CELERY_BROKER_URL
# when set, else the machine's Redis (MACHINE_REDIS, database WORKER_REDIS_DB), else a
# redis-server started here on WORKER_REDIS_PORT (data in .redis/; make worker-stop stops it).
# Commands run with the same CELERY_BROKER_URL (and DATABASE_NAME) queue their recomputes to them.
WORKERS ?= 2
MACHINE_REDIS ?= 127.0.0.1:6379
WORKER_REDIS_DB ?= 1
WORKER_REDIS_PORT ?= 6391
worker: $(STAMP)
	@url="$${CELERY_BROKER_URL:-}"; \
	if [ -z "$$url" ] && $(PY) -c "import redis, sys; host, port = sys.argv[1].split(':'); \
			redis.Redis(host, int(port), socket_connect_timeout=1).ping()" \
			$(MACHINE_REDIS) 2>/dev/null; then \
		url="redis://$(MACHINE_REDIS)/$(WORKER_REDIS_DB)"; \
	fi; \
	if [ -z "$$url" ]; then \
		command -v redis-server >/dev/null || { echo "make worker: no CELERY_BROKER_URL, no" \
			"Redis at $(MACHINE_REDIS) and no redis-server to start" >&2; exit 1; }; \
		mkdir -p .redis; \
		redis-server --port $(WORKER_REDIS_PORT) --bind 127.0.0.1 --dir $(CURDIR)/.redis \
			--save "" --appendonly no --daemonize yes --pidfile $(CURDIR)/.redis/redis.pid \
			--logfile $(CURDIR)/.redis/redis.log; \
		url="redis://127.0.0.1:$(WORKER_REDIS_PORT)/0"; \
	fi; \
	echo "make worker: $(WORKERS) worker processes on $$url, database" \
		"$${DATABASE_NAME:-postgres}; queue recomputes with CELERY_BROKER_URL=$$url"; \
	CELERY_BROKER_URL="$$url" exec $(VENV)/bin/celery -A commcare_connect.celery_app worker \
		--concurrency $(WORKERS) --loglevel INFO

worker-stop:
	@if [ -f .redis/redis.pid ]; then kill "$$(cat .redis/redis.pid)" && rm -f .redis/redis.pid; fi

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

# One correction end to end (plan, approve, apply, every recompute done) in process and on
# Celery workers, against the host team's final script read from a host git directory
# (HOST_GIT; without one the script's row is left out) and the raw-SQL floor.
E2E_VISITS ?= 200000
HOST_GIT ?= $(wildcard /work/.mirror/dimagi+commcare-connect/repo)
bench-e2e: $(STAMP)
	$(PY) -m benchmarks.e2e --visits $(E2E_VISITS) $(if $(HOST_GIT),--host-git $(HOST_GIT))

bench-e2e-small: $(STAMP)
	$(PY) -m benchmarks.e2e --visits 5000 --drop --out benchmarks/results/benchmarks-e2e-small.md \
		$(if $(HOST_GIT),--host-git $(HOST_GIT))

clean-db:
	rm -rf .pgdata

# The host runs psycopg2: run the ledger's tests in a second environment that has psycopg2
# instead of psycopg 3 (same pins otherwise, read from pyproject.toml).
VENV2 := .venv-psycopg2
PSYCOPG2 := psycopg2-binary==2.9.13

$(VENV2)/.installed: $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV2)
	$(VENV2)/bin/python -m pip install --quiet --upgrade pip
	grep -hv -e '^-r' -e '^psycopg' requirements/standalone.txt requirements/dev.txt \
		> $(VENV2)/requirements.txt
	$(VENV2)/bin/python -m pip install --quiet -r $(VENV2)/requirements.txt "$(PSYCOPG2)"
	$(VENV2)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# The six-submitter live-traffic test under psycopg2 with the host's Redis lock: the host's own
# driver and lock together (slow; CI runs it once).
test-psycopg2-live: $(VENV2)/.installed
	$(VENV2)/bin/python -m pytest \
		"tests/ledger/test_live_traffic.py::test_live_submissions_never_fail_during_apply_and_undo[redis-1]" \
		$(PYTEST_ARGS)

test-psycopg2: $(VENV2)/.installed
	$(VENV2)/bin/python -c "import importlib.util as u; assert not u.find_spec('psycopg'), 'psycopg 3 present'"
	$(VENV2)/bin/python -m pytest tests/ledger tests/audit $(PYTEST_ARGS)
	$(VENV2)/bin/python -m pytest --pyargs ledger.contract $(PYTEST_ARGS)

# The distribution: a wheel of the ledger alone, checked for what it must and must not hold.
wheel: $(STAMP)
	rm -rf dist
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	$(PY) tools/check_wheel.py dist/*.whl > dist/FILES.txt
	@echo "wheel: $$(ls dist/*.whl), $$(wc -l < dist/FILES.txt) files (dist/FILES.txt)"

# Install that wheel into a fresh environment next to the stand-in (never the source tree)
# and run the contract suite from the installed package.
VENV3 := .venv-wheel
test-wheel: wheel
	rm -rf $(VENV3) build/wheel-path
	$(PYTHON) -m venv $(VENV3)
	$(VENV3)/bin/python -m pip install --quiet --upgrade pip
	$(VENV3)/bin/python -m pip install --quiet -r requirements/dev.txt dist/*.whl
	mkdir -p build/wheel-path && ln -s $(CURDIR)/commcare_connect build/wheel-path/commcare_connect
	cd build && PYTHONPATH=$(CURDIR)/build/wheel-path DJANGO_SETTINGS_MODULE=commcare_connect.settings_test \
		../$(VENV3)/bin/python -m pytest -p no:cacheprovider --pyargs ledger.contract \
		--rootdir=. -o addopts="" $(PYTEST_ARGS)
	cd build && ../$(VENV3)/bin/python -c "import ledger, sys; \
		assert 'site-packages' in ledger.__file__, ledger.__file__; print('contract ran from', ledger.__file__)"

# The ledger inside the real CommCare Connect (HOST: its checkout, at 8f79228b): the stand-in's
# comparisons with the host's source (tests/host, which skip without a checkout), the contract
# suite, then the host's own full suite with the ledger installed. See host_test/README.md.
HOST ?= /work/host
host-test: $(STAMP)
	HOST_CHECKOUT=$(HOST) $(PY) -m pytest tests/host $(PYTEST_ARGS)
	HOST=$(HOST) host_test/run.sh contract
	HOST=$(HOST) host_test/run.sh host-suite
