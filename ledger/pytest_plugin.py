"""pytest fixtures of the ledger, loaded through the ``pytest11`` entry point."""

import pytest


@pytest.fixture
def corrections_ledger(db):
    """The :mod:`ledger.testing` assertions, with database access enabled."""
    from ledger import testing

    return testing
