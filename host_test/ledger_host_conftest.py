"""Pytest plugin for running the ledger's contract suite from outside the host's tree.

Loaded with ``-p ledger_host_conftest`` (``run.sh contract`` does this). The host's fixtures
live in ``commcare_connect/conftest.py``, which pytest only picks up for tests inside the host
checkout; this loads them for ``pytest --pyargs ledger.contract``, including the two autouse
ones (``media_storage`` and ``ensure_currency_country_data``) — what a conftest.py holding
``pytest_plugins = ["commcare_connect.conftest"]`` would do.

They are loaded in ``pytest_configure`` rather than through a module-level ``pytest_plugins``:
a ``-p`` plugin is imported before pytest-django has set Django up, and the host's conftest
imports models at import time (``AppRegistryNotReady``). By ``pytest_configure`` Django is set
up, and fixtures registered then are seen by every test.
"""

from importlib.metadata import entry_points

HOST_FIXTURES = "commcare_connect.conftest"
LEDGER_FIXTURES = "ledger.pytest_plugin"


def pytest_configure(config):
    plugins = config.pluginmanager
    plugins.import_plugin(HOST_FIXTURES)
    # The ledger's own fixtures (``corrections_ledger``) come through its ``pytest11`` entry
    # point when the ledger is pip-installed; when it is only on PYTHONPATH, load them here.
    if not any(ep.value == LEDGER_FIXTURES for ep in entry_points(group="pytest11")):
        plugins.import_plugin(LEDGER_FIXTURES)
