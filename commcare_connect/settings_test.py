"""Settings for the test suites: the project's settings plus ``ledger.flushable``.

Transactional tests flush the test database after each test; ``ledger.flushable`` provides the
``flush`` that may empty the ledger's append-only tables there (test databases only). The
project's own settings leave Django's ``flush`` alone.
"""

import os

from commcare_connect.settings import *  # noqa: F403
from commcare_connect.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "ledger.flushable"]

# Tests choose where recomputes run (a test's child process through LEDGER_RECOMPUTE); a broker
# in the developer's environment changes nothing.
LEDGER_RECOMPUTE = os.environ.get("LEDGER_RECOMPUTE") or "inline"
# A test's worker process may wait longer on a held accrual lock (the crash test kills it then).
if os.environ.get("LEDGER_ACCESS_LOCK_WAIT"):
    LEDGER_ACCESS_LOCK_WAIT = float(os.environ["LEDGER_ACCESS_LOCK_WAIT"])
