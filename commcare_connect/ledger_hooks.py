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

POLL = 0.02  # seconds between attempts while another session holds a lock


def _try_all(access_ids: Sequence[int]) -> int | None:
    """Take every lock in one statement, or none: returns the first busy access id, if any."""
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT ledger_access_locks")
        cursor.execute(
            "SELECT a FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(a, n) "
            "WHERE NOT pg_try_advisory_xact_lock(%s, (a %% 2147483647)::int) ORDER BY n LIMIT 1",
            [sorted(access_ids), ACCRUAL_LOCK_NAMESPACE],
        )
        row = cursor.fetchone()
        if row is None:
            cursor.execute("RELEASE SAVEPOINT ledger_access_locks")
            return None
        # Rolling back to the savepoint frees the locks taken by this attempt.
        cursor.execute("ROLLBACK TO SAVEPOINT ledger_access_locks")
        cursor.execute("RELEASE SAVEPOINT ledger_access_locks")
        return row[0]


def lock_accesses_for_transaction(access_ids: Sequence[int], wait: float) -> Callable[[], None]:
    """Hold every access's accrual lock until the transaction ends, or raise ``LockBusy``."""
    deadline = time.monotonic() + wait
    while True:
        busy = _try_all(access_ids)
        if busy is None:
            return lambda: None  # transaction-scoped: the commit or rollback frees them
        if time.monotonic() >= deadline:
            raise LockBusy(f"the accrual lock of access {busy} is held elsewhere")
        time.sleep(POLL)
