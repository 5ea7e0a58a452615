"""Access to the real host's code, for tests that compare this stand-in with it.

``HOST_CHECKOUT`` (default ``/work/host``) names a checkout of dimagi/commcare-connect; a test
that needs it is skipped when it is not there (``make host-test HOST=<checkout>`` runs them).
A host module loaded this way runs against this stand-in's models, which carry the same names
and fields.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.pytest_skips import skip_without_host_checkout

HOST_CHECKOUT = Path(os.environ.get("HOST_CHECKOUT") or "/work/host")


def load_host_module(relative_path: str):
    """Execute one of the host's source files as a module; None when there is no checkout."""
    path = HOST_CHECKOUT / relative_path
    if not path.exists():
        return None
    name = "host_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def host_completed_work():
    """The host's ``opportunity/utils/completed_work.py`` (skips without a checkout)."""
    module = load_host_module("commcare_connect/opportunity/utils/completed_work.py")
    if module is None:
        skip_without_host_checkout(HOST_CHECKOUT)
    return module
