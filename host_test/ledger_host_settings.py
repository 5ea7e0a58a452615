"""Settings for running the real CommCare Connect with the ledger installed (tests only).

The host's own test settings, plus the ledger app and its flush for test databases. Put the host
checkout and a directory holding only the ``ledger`` package on ``PYTHONPATH``; ``run.sh`` does
that.
"""

import os

from config.settings.test import *  # noqa: F401,F403
from config.settings.test import INSTALLED_APPS

# ledger.flushable: the host's transactional tests (and the contract suite) flush the test
# database, whose ledger tables refuse TRUNCATE otherwise. Test settings only.
INSTALLED_APPS = [*INSTALLED_APPS, "ledger", "ledger.flushable"]
assert "pgtrigger" in INSTALLED_APPS, "the ledger needs django-pgtrigger installed in the host"

# The hook the ledger calls to lock opportunity accesses while it recomputes accruals (a
# dotted path, e.g. "ledger.locks.redis_access_lock"). Unset unless given in the environment.
if os.environ.get("LEDGER_ACCESS_LOCK"):
    LEDGER_ACCESS_LOCK = os.environ["LEDGER_ACCESS_LOCK"]
