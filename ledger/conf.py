"""The ledger's settings, one place with their defaults.

Each is read from Django settings as ``LEDGER_<NAME>``; ``docs/api.md`` lists them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Dotted path to the host's per-access accrual lock (see ledger.locks); None: no lock.
    "ACCESS_LOCK": None,
    # The cache alias whose ``lock()`` the Redis accrual lock uses.
    "ACCESS_LOCK_CACHE": "default",
    # Seconds the projector waits for all accrual locks before it backs off and retries.
    "ACCESS_LOCK_WAIT": 2.0,
    # Databases (besides test_*) whose TRUNCATE guards the ledger's flush command may lift.
    "FLUSHABLE_DATABASES": (),
}


def get(name: str) -> Any:
    return getattr(settings, f"LEDGER_{name}", DEFAULTS[name])
