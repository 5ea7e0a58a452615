"""Running the host's accrual recompute next to live traffic.

The host's ``update_payment_accrued_for_user`` takes the access's accrual lock and then writes
every work of the access, while the host's form processor writes a work and then takes the
same lock: run side by side, the two can wait on each other. The host lives with that; the
ledger, which recomputes after every projection while submissions keep arriving, must not add
to it. So each recompute runs in a transaction of its own, and:

* where the accrual lock ends with the transaction (``transaction_scoped``, the PostgreSQL
  advisory lock), the lock and then the access's rows are taken first without ever blocking —
  the host's code then finds them held already and waits for nothing (so no ``lock_timeout``
  is needed either);
* otherwise (the host's Redis lock, which cannot be taken twice), the host's code takes its
  lock itself, and every row wait is bounded by ``lock_timeout``
  (``LEDGER_RECOMPUTE_LOCK_TIMEOUT_MS``): a request holding a row gets it back within that
  time instead of meeting a deadlock.

Either way a busy access is tried again later, never failed: :func:`recompute_access` backs
off and retries it alone (:mod:`ledger.retry`); the recompute of a batch
(``ledger.services.recompute``, the Celery tasks of :mod:`ledger.tasks`) makes one attempt per
access and comes back to busy ones after the others, so one worker's live traffic delays only
that worker's recompute.

What the ledger adds to the host's own queries is kept to three statements per access: the
accrual lock (through ``LEDGER_ACCESS_LOCK``), one statement that reads the access with its
opportunity and currency and — without waiting — locks its row and its works' rows, claims its
pending recompute rows and sets the transaction's ``lock_timeout``, and the update that marks
those rows done. The host's bulk task (``bulk_update_payment_accrued``) spends as many on its
lock, its lazy reads of the opportunity and currency, and its unlock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connection, transaction
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now

from ledger import conf, host
from ledger.errors import LockBusy
from ledger.host import CompletedWork
from ledger.locks import POLL, take_access_locks
from ledger.models import AccrualRecompute, RecomputeState
from ledger.retry import with_backoff
from ledger.sql import table

# Annotations of the one statement that prepares a recompute (removed from the access after).
_WORKS = "ledger_works"
_WORKS_LOCKED = "ledger_works_locked"
_CLAIMED = "ledger_claimed"
_TIMEOUT = "ledger_lock_timeout"


class Claim:
    """The pending recompute rows an attempt takes over and marks done with its result.

    ``batch_id`` limits them to one batch's (None: every batch's). Rows are claimed with
    ``FOR UPDATE SKIP LOCKED`` in the statement that prepares the recompute, so two workers
    never finish the same row: a row another transaction is finishing is left to it. After the
    call ``rows`` holds the ids marked done — empty when none was left pending, in which case
    nothing was recomputed.
    """

    __slots__ = ("batch_id", "rows")

    def __init__(self, batch_id: str | None = None) -> None:
        self.batch_id = batch_id
        self.rows: list[int] = []


def _claim_sql(access_id: int, claim: Claim) -> tuple[str, list]:
    where, params = "access_id = %s AND state = %s", [access_id, RecomputeState.pending.value]
    if claim.batch_id is not None:
        where += " AND batch_id = %s"
        params.append(str(claim.batch_id))
    return (
        f"ARRAY(SELECT id FROM {table(AccrualRecompute)} WHERE {where} "
        "ORDER BY id FOR UPDATE SKIP LOCKED)",
        params,
    )


def _prepare(access_id: int, *, lock_rows: bool, claim: Claim | None, timeout_ms: int | None):
    """One statement: the access (with its opportunity and currency), and what the attempt
    needs taken before the host's code runs. None when the access is gone or, with
    ``lock_rows``, its row is held elsewhere; the works' counts say whether all were locked."""
    works = table(CompletedWork)
    query = host.accesses_for_recompute().filter(pk=access_id)
    annotations = {}
    if lock_rows:
        query = query.select_for_update(no_key=True, skip_locked=True, of=("self",))
        annotations[_WORKS_LOCKED] = RawSQL(
            f"(SELECT count(*) FROM (SELECT 1 FROM {works} WHERE opportunity_access_id = %s "
            "FOR UPDATE SKIP LOCKED) AS locked)",
            [access_id],
        )
        annotations[_WORKS] = RawSQL(
            f"(SELECT count(*) FROM {works} WHERE opportunity_access_id = %s)", [access_id]
        )
    if claim is not None:
        annotations[_CLAIMED] = RawSQL(*_claim_sql(access_id, claim))
    if timeout_ms is not None:
        annotations[_TIMEOUT] = RawSQL("set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
    return query.annotate(**annotations).first()


def _claim_of_gone_access(access_id: int, claim: Claim) -> list[int]:
    with connection.cursor() as cursor:
        sql, params = _claim_sql(access_id, claim)
        cursor.execute(f"SELECT {sql}", params)
        return list(cursor.fetchone()[0])


def recompute_access(
    access_id: int,
    *,
    then: Callable[[int | None], None] | None = None,
    rollback: bool = False,
    progress: Callable[[str], None] | None = None,
    patient: bool = True,
    claim: Claim | None = None,
) -> int | None:
    """The host's full recompute of one access, safely; its new accrual (None: no access).

    ``then`` runs inside the same transaction with the result. ``claim`` takes the access's
    pending recompute rows over and marks them done with the result in the same transaction
    (a crash leaves both or neither); with none left pending it recomputes nothing.
    ``rollback`` discards everything (what verify uses to compare without changing anything).
    Without ``patient`` it makes one attempt and raises what stopped it (a busy row or lock, an
    unreachable lock backend), for the caller to come back to later.
    """
    lock = host.access_lock()
    scoped = lock is not None and getattr(lock, "transaction_scoped", False)
    # Only where the host's code takes its own lock and may meet live traffic's rows.
    timeout_ms = None if scoped else int(conf.get("RECOMPUTE_LOCK_TIMEOUT_MS"))
    wait = conf.get("ACCESS_LOCK_WAIT")

    def attempt() -> int | None:
        nested = connection.in_atomic_block
        if claim is not None:
            claim.rows = []
        with transaction.atomic():
            deadline = time.monotonic() + wait
            if scoped:
                take_access_locks(lock, [access_id], wait)
            while True:
                access = _prepare(access_id, lock_rows=scoped, claim=claim, timeout_ms=timeout_ms)
                if access is not None and (
                    not scoped or getattr(access, _WORKS_LOCKED) >= getattr(access, _WORKS)
                ):
                    break
                if (
                    access is None
                    and not host.OpportunityAccess.objects.filter(pk=access_id).exists()
                ):
                    break  # gone
                # Held by live traffic: what was taken stays taken; try the rest again.
                if time.monotonic() >= deadline:
                    raise LockBusy(f"the rows of access {access_id} are held by live traffic")
                time.sleep(POLL)
            if access is None:
                after = None
                if claim is not None:
                    claim.rows = _claim_of_gone_access(access_id, claim)
            else:
                values = vars(access)
                for name in (_WORKS, _WORKS_LOCKED, _TIMEOUT):
                    values.pop(name, None)
                if claim is not None:
                    claim.rows = list(values.pop(_CLAIMED))
                    if not claim.rows:
                        return None  # finished elsewhere already (or being finished now)
                after = host.recompute_loaded(access)
            if claim is not None and claim.rows:
                AccrualRecompute.objects.filter(
                    pk__in=claim.rows, state=RecomputeState.pending
                ).update(state=RecomputeState.done, accrual_after=after, done_at=Now())
            if then is not None:
                then(after)
            if nested and timeout_ms is not None:
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
