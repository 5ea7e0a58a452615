"""Finishing pending accrual recomputes, one access per transaction, wherever that runs.

A projection writes one :class:`~ledger.models.AccrualRecompute` row per (batch, access) in its
own transaction; these rows are the record of what is left to do. They are finished either in
the process that applied the batch (``ledger.services.recompute``, ``LEDGER_RECOMPUTE =
"inline"``) or by the host's Celery workers (:mod:`ledger.tasks`, ``"celery"``), through the
same :func:`finish`: the access's pending rows are claimed without waiting (``SKIP LOCKED``),
the host's recompute runs, and the rows are marked done in that one transaction. Running it
twice, or on two workers at once, is harmless: a row is marked done only while still pending
and by the one transaction that claimed it; a row already done is skipped.

An attempt that does not finish an access is recorded on its rows (``attempts``,
``last_problem`` busy or failed, ``last_error``) in a statement of its own that skips rows
another transaction holds — so the record of progress never waits either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec
from django.db import connection

from ledger import accruals, conf
from ledger.models import AccrualRecompute, RecomputeProblem, RecomputeState
from ledger.retry import describe, is_retryable
from ledger.sql import int_array, table

log = logging.getLogger("ledger.recompute")

INLINE = "inline"
CELERY = "celery"
MODES = (INLINE, CELERY)


class Outcome(NamedTuple):
    """What one attempt on one access did."""

    state: str  # "done", "skipped" (nothing pending: finished elsewhere), "busy", "failed"
    rows: int = 0  # recompute rows marked done
    accrual: int | None = None
    reason: str = ""  # for busy and failed: "busy: …" / "failed: …"


def finish(access_id: int, batch_id: str | None = None) -> Outcome:
    """One attempt at an access's pending recomputes (of one batch, or of every batch).

    Never raises for the access: a busy one (live traffic, an unreachable lock backend) and a
    failing one are recorded on its rows and returned as such.
    """
    claim = accruals.Claim(batch_id)
    try:
        after = accruals.recompute_access(access_id, claim=claim, patient=False)
    except Exception as error:  # noqa: BLE001 - one access never stops the others
        if is_retryable(error):
            problem, reason = RecomputeProblem.busy, f"busy: {describe(error)}"
        else:
            problem, reason = RecomputeProblem.failed, f"failed: {type(error).__name__}: {error}"
            log.warning("recompute of access %s failed", access_id, exc_info=error)
        # A failure is not tried again by the workers: it leaves the queue until a new run.
        record(access_id, batch_id, problem, reason, dequeue=problem == RecomputeProblem.failed)
        return Outcome(problem.value, reason=reason)
    if not claim.rows:
        return Outcome("skipped")
    return Outcome("done", len(claim.rows), after)


def _rows_where(batch_id: str | None) -> tuple[str, list]:
    if batch_id is None:
        return "", []
    return " AND batch_id = %s", [str(batch_id)]


def record(
    access_id: int, batch_id: str | None, problem: RecomputeProblem, reason: str, *, dequeue=False
) -> None:
    """Note an attempt that did not finish the access on its pending rows (never raises)."""
    where, params = _rows_where(batch_id)
    queued = ", queued_at = NULL" if dequeue else ""
    recompute = table(AccrualRecompute)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE {recompute} SET attempts = attempts + 1, last_problem = %s,
                           last_error = %s, last_tried_at = clock_timestamp(){queued}
                    WHERE id IN (SELECT id FROM {recompute}
                                 WHERE access_id = %s AND state = 'pending'{where}
                                 FOR UPDATE SKIP LOCKED)""",
                [problem.value, reason[:2000], access_id, *params],
            )
    except Exception as error:  # noqa: BLE001 - bookkeeping only; the rows stay pending
        log.warning("could not record the recompute attempt of access %s: %s", access_id, error)


def dequeue(access_ids: Sequence[int], batch_id: str | None) -> None:
    """The accesses are no longer in the queue (given up on: failed, or busy too long)."""
    if not access_ids:
        return
    where, params = _rows_where(batch_id)
    recompute = table(AccrualRecompute)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {recompute} SET queued_at = NULL
                WHERE id IN (SELECT id FROM {recompute}
                             WHERE access_id = ANY(%s::bigint[]) AND state = 'pending'{where}
                             FOR UPDATE SKIP LOCKED)""",
            [int_array(access_ids), *params],
        )


def pending_accesses(batch_id: str | None = None) -> list[int]:
    """Accesses with a pending recompute (of the batch, or of any), in id order."""
    query = AccrualRecompute.objects.filter(state=RecomputeState.pending)
    if batch_id is not None:
        query = query.filter(batch_id=batch_id)
    return list(query.order_by("access_id").values_list("access_id", flat=True).distinct())


def chunked(access_ids: Sequence[int], size: int | None = None) -> Iterable[list[int]]:
    size = max(int(size or conf.get("RECOMPUTE_CHUNK")), 1)
    for start in range(0, len(access_ids), size):
        yield list(access_ids[start : start + size])


class Progress(msgspec.Struct, kw_only=True):
    """A batch's recomputes: how many rows are done and pending, and why pending ones wait."""

    total: int
    done: int
    pending: int
    queued: int  # pending and in the task queue (not given up on)
    busy: int  # pending, last attempt found the access busy
    failed: int  # pending, last attempt failed
    last_error: str | None = None  # the latest problem recorded on a pending row


def progress(batch_id: str) -> Progress:
    """One read of the batch's recompute rows."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT count(*),
                       count(*) FILTER (WHERE state = 'done'),
                       count(*) FILTER (WHERE state = 'pending'),
                       count(*) FILTER (WHERE state = 'pending' AND queued_at IS NOT NULL),
                       count(*) FILTER (WHERE state = 'pending' AND last_problem = 'busy'),
                       count(*) FILTER (WHERE state = 'pending' AND last_problem = 'failed'),
                       (SELECT last_error FROM {table(AccrualRecompute)}
                        WHERE batch_id = %s AND state = 'pending' AND last_error <> ''
                        ORDER BY last_tried_at DESC NULLS LAST LIMIT 1)
                FROM {table(AccrualRecompute)} WHERE batch_id = %s""",
            [batch_id, batch_id],
        )
        total, done, pending, queued, busy, failed, last_error = cursor.fetchone()
    return Progress(
        total=total, done=done, pending=pending, queued=queued, busy=busy, failed=failed,
        last_error=last_error,
    )  # fmt: skip


def enqueue(batch_id: str | None) -> int:
    """Hand the batch's pending recomputes (None: every pending one) to the Celery workers, a
    chunk of accesses per task (``LEDGER_RECOMPUTE_CHUNK``); return how many accesses were
    queued.

    The rows are stamped ``queued_at`` first and the stamp is taken back from the accesses of
    any chunk that could not be sent, so a queued row is always one a worker will come to.
    """
    import time

    from ledger import tasks

    access_ids = pending_accesses(batch_id)
    if not access_ids:
        return 0
    where, params = _rows_where(batch_id)
    recompute = table(AccrualRecompute)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {recompute} SET queued_at = clock_timestamp()
                WHERE id IN (SELECT id FROM {recompute}
                             WHERE state = 'pending'{where} FOR UPDATE SKIP LOCKED)""",
            params,
        )
    batch = None if batch_id is None else str(batch_id)
    started = time.time()
    chunks = list(chunked(access_ids))
    for n, chunk in enumerate(chunks):
        try:
            tasks.recompute_accesses.apply_async(args=[batch, chunk, started])
        except Exception:
            dequeue([a for rest in chunks[n:] for a in rest], batch_id)
            raise
    return len(access_ids)


def mode() -> str:
    """``LEDGER_RECOMPUTE``: where recomputes run after an apply or undo."""
    return conf.get("RECOMPUTE")
