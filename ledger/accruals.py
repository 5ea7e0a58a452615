"""Running the host's accrual recompute next to live traffic.

The host's ``update_payment_accrued_for_user`` takes the access's accrual lock and then writes
every work of the access, while the host's form processor writes a work and then takes the
same lock: run side by side, the two can wait on each other. The host lives with that; the
ledger, which recomputes after every projection while submissions keep arriving, must not add
to it. So each recompute runs in a transaction of its own, and:

* where the accrual lock ends with the transaction (``transaction_scoped``, the PostgreSQL
  advisory lock), the lock and then the access's rows are taken first without ever blocking —
  the host's code then finds them held already and waits for nothing;
* otherwise (the host's Redis lock, which cannot be taken twice), the host's code takes its
  lock itself, and every row wait is bounded by ``lock_timeout``
  (``LEDGER_RECOMPUTE_LOCK_TIMEOUT_MS``): a request holding a row gets it back within that
  time instead of meeting a deadlock.

Either way a busy access is tried again later, never failed: :func:`recompute_access` backs
off and retries it alone (:mod:`ledger.retry`); the recompute of a batch
(``ledger.services.recompute``) makes one attempt per access and comes back to busy ones after
the others, so one worker's live traffic delays only that worker's recompute.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connection, transaction

from ledger import conf, host
from ledger.host import CompletedWork, OpportunityAccess
from ledger.locks import take_access_locks
from ledger.retry import with_backoff
from ledger.sql import ids_where, lock_rows_patiently


def recompute_access(
    access_id: int,
    *,
    then: Callable[[int | None], None] | None = None,
    rollback: bool = False,
    progress: Callable[[str], None] | None = None,
    patient: bool = True,
) -> int | None:
    """The host's full recompute of one access, safely; its new accrual (None: no access).

    ``then`` runs inside the same transaction with the result (marking a recompute row done
    commits together with the recompute). ``rollback`` discards everything (what verify uses to
    compare without changing anything). Without ``patient`` it makes one attempt and raises
    what stopped it (a busy row or lock, an unreachable lock backend), for the caller to come
    back to later.
    """
    lock = host.access_lock()
    timeout_ms = int(conf.get("RECOMPUTE_LOCK_TIMEOUT_MS"))

    def attempt() -> int | None:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{timeout_ms}ms'")
            if lock is not None and getattr(lock, "transaction_scoped", False):
                deadline = time.monotonic() + conf.get("ACCESS_LOCK_WAIT")
                take_access_locks(lock, [access_id], conf.get("ACCESS_LOCK_WAIT"))
                lock_rows_patiently(
                    CompletedWork,
                    ("status",),
                    ids_where(CompletedWork, "opportunity_access_id", [access_id]),
                    strength="UPDATE",
                    deadline=deadline,
                )
                lock_rows_patiently(
                    OpportunityAccess, ("payment_accrued",), [access_id], deadline=deadline
                )
            after = host.recompute_access(access_id)
            if then is not None:
                then(after)
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout TO DEFAULT")
            if rollback:
                transaction.set_rollback(True)
            return after

    if not patient:
        return attempt()
    return with_backoff(
        attempt,
        deadline_seconds=conf.get("RETRY_SECONDS"),
        progress=progress,
        what=f"the recompute of access {access_id}",
    )
