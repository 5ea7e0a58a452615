"""How this project plugs its accrual lock into the correction ledger (``LEDGER_ACCESS_LOCK``).

With Redis configured (``REDIS_URL``) the stand-in locks exactly as the host does and the
ledger's own ``ledger.locks.redis_access_lock`` is used. Without Redis the stand-in's accrual
lock is a PostgreSQL advisory lock keyed by the access id; this module takes the same locks for
the ledger, all or none within the wait, until the transaction ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from django.db import connection

from commcare_connect.opportunity.visit_import import ACCRUAL_LOCK_NAMESPACE
from ledger.errors import LockBusy

POLL = 0.01  # seconds between rounds of attempts on the locks still busy


def _try(access_ids: Sequence[int]) -> list[int]:
    """Take each lock that is free (held until the transaction ends); return the busy ones."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a FROM unnest(%s::bigint[]) AS u(a) "
            "WHERE NOT pg_try_advisory_xact_lock(%s, (a %% 2147483647)::int) ORDER BY a",
            [sorted(access_ids), ACCRUAL_LOCK_NAMESPACE],
        )
        return [a for (a,) in cursor.fetchall()]


def lock_accesses_for_transaction(access_ids: Sequence[int], wait: float) -> Callable[[], None]:
    """Hold every access's accrual lock until the transaction ends, or raise ``LockBusy``.

    Free locks are kept and busy ones tried again shortly; on giving up, the caller's
    transaction rolls back and that frees the ones taken.
    """
    deadline = time.monotonic() + wait
    missing = list(access_ids)
    while True:
        missing = _try(missing)
        if not missing:
            return lambda: None  # transaction-scoped: the commit or rollback frees them
        if time.monotonic() >= deadline:
            raise LockBusy(f"the accrual lock of access {missing[0]} is held elsewhere")
        time.sleep(POLL)


# Transaction-scoped: the advisory locks end with the transaction, so the ledger may run inside a
# caller's transaction (a test case, ATOMIC_REQUESTS) and recompute there.
lock_accesses_for_transaction.transaction_scoped = True
