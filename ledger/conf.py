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
    # How long (ms) the host's recompute, run by the ledger, may wait on a row before it lets
    # go and retries (it never waits on a request that waits on it).
    "RECOMPUTE_LOCK_TIMEOUT_MS": 200,
    # Seconds apply, undo and pricing keep retrying while live traffic holds what they need.
    "RETRY_SECONDS": 300.0,
    # Where the accrual recomputes after an apply or undo run: "inline" (in the applying
    # process) or "celery" (queued on commit to the host's Celery workers, ledger.tasks).
    "RECOMPUTE": "inline",
    # Accesses per Celery task when recomputes are queued.
    "RECOMPUTE_CHUNK": 10,
    # Apply refuses a batch nobody but its planner has reviewed (corrections approve).
    "REQUIRE_APPROVAL": True,
    # Username used when --operator is not given (a test suite's or a single-user setup's);
    # None: every step must name its operator.
    "DEFAULT_OPERATOR": None,
    # Key signing chain anchors (read it from the environment in settings), at least 256 bits;
    # None: no anchors. Set it only in the anchor witness's settings (docs/auditing.md).
    "ANCHOR_KEY": None,
    # Earlier anchor keys, still accepted when checking anchors they signed (key rotation).
    "ANCHOR_KEYS": (),
    # File the anchors are appended to (kept outside the database); None: stdout only.
    "ANCHOR_LOG": None,
    # Databases (besides test_*) whose TRUNCATE guards the ledger's flush command may lift.
    "FLUSHABLE_DATABASES": (),
}


def get(name: str) -> Any:
    return getattr(settings, f"LEDGER_{name}", DEFAULTS[name])
