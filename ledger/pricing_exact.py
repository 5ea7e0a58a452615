"""Pricing by the host's own code: ``corrections plan … --exact``.

The planned flips are written inside a transaction that is always rolled back, the host's
``update_status`` recomputes every work of each affected access there — the computation the
recompute after apply runs — and the saved pay fields are read before and after. It takes
row locks (without waiting on live traffic) on every work of every affected access and on the
accesses, and holds them while the host's code runs once per access: a minute or more for a
batch of thousands of workers, during which their submissions wait. The default pricing
(:mod:`ledger.accrual_rules`) reads instead and gives the same figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal

from django.db import connection, transaction

from ledger import conf, host
from ledger.accrual_rules import AccessSums, WorkAfter
from ledger.host import CompletedWork, OpportunityAccess, UserVisit
from ledger.models import EntityKind
from ledger.planners.rows import PlannedRow, table
from ledger.retry import with_backoff
from ledger.sql import db_now, ids_where, int_array, lock_rows_patiently, text_array

PROGRESS_EVERY = 5.0  # seconds between progress lines while pricing
_FIGURES = (
    "saved_completed_count",
    "saved_approved_count",
    "saved_payment_accrued",
    "saved_payment_accrued_usd",
    "saved_org_payment_accrued",
    "saved_org_payment_accrued_usd",
)


def _write_statuses(model, rows: list[tuple[int, str, object]], deadline: float) -> None:
    """Write (id, status, stamp) as the projector will: the status and
    ``status_modified_date``.

    The stamp matters: the host prices approved work in USD at the rate of the day its status
    changed (an undo restores each row's earlier stamp). Rows are locked first without
    waiting, as the projector locks them: a dry run must not queue behind live traffic while
    holding rows it needs either.
    """
    if not rows:
        return
    ids = [r[0] for r in rows]
    lock_rows_patiently(model, ("status",), ids, strength="UPDATE", deadline=deadline)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {table(model)} t SET status = u.status, status_modified_date = u.stamp
                FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS u(id, status, stamp)
                WHERE t.id = u.id""",
            [int_array(ids), text_array(r[1] for r in rows), text_array(r[2] for r in rows)],
        )


def _works(access_ids: list[int]) -> dict[int, tuple]:
    """Every work of the accesses: access, status and the saved figures."""
    return {
        row[0]: row[1:]
        for row in CompletedWork.objects.filter(opportunity_access_id__in=access_ids).values_list(
            "pk", "opportunity_access_id", "status", *_FIGURES
        )
    }


def _sums(before: dict[int, tuple], after: dict[int, tuple]) -> dict[int, AccessSums]:
    sums: dict[int, AccessSums] = {}
    for figures, now in ((before, True), (after, False)):
        for access_id, _status, _c, _a, pay, usd, org, org_usd in figures.values():
            s = sums.setdefault(access_id, AccessSums())
            if now:
                s.pay_now += pay
                s.usd_now += Decimal(usd)
                s.org_now += org
                s.org_usd_now += Decimal(org_usd)
            else:
                s.pay_after += pay
                s.usd_after += Decimal(usd)
                s.org_after += org
                s.org_usd_after += Decimal(org_usd)
    return sums


def _simulate_once(
    flips: list[PlannedRow],
    access_ids: list[int],
    progress: Callable[[str], None] | None,
    works: dict[int, WorkAfter] | None,
    stamps: Mapping[tuple[str, int], object],
) -> tuple[dict[int, AccessSums], dict[int, str]]:
    """Flip, let the host recompute, read the figures, roll back. One attempt."""
    planned = {r.entity_id: r.to_status for r in flips if r.entity_kind != EntityKind.visit}
    deadline = time.monotonic() + conf.get("ACCESS_LOCK_WAIT")
    with transaction.atomic():
        stamp = db_now()
        # The host's recompute writes every work of the access and saves the access: lock all
        # of them, and the flipped visits, without waiting on live traffic.
        lock_rows_patiently(
            CompletedWork,
            ("status",),
            ids_where(CompletedWork, "opportunity_access_id", access_ids),
            strength="UPDATE",
            deadline=deadline,
        )
        lock_rows_patiently(OpportunityAccess, ("payment_accrued",), access_ids, deadline=deadline)
        before = _works(access_ids)  # the saved figures as they are
        for model, kind in ((CompletedWork, "completed_work"), (UserVisit, "visit")):
            # The projector's stamp: the apply's time, or the date an undo restores.
            _write_statuses(
                model,
                [
                    (r.entity_id, r.to_status, stamps.get((kind, r.entity_id), stamp))
                    for r in flips
                    if r.entity_kind == kind
                ],
                deadline,
            )
        accesses = OpportunityAccess.objects.filter(pk__in=access_ids).select_related("opportunity")
        total, shown = len(access_ids), time.monotonic()
        for done, access in enumerate(accesses.order_by("pk"), start=1):
            host.simulate_recompute(access)
            if progress and (time.monotonic() - shown >= PROGRESS_EVERY or done == total):
                progress(f"priced {done}/{total} accesses by the host's recompute")
                shown = time.monotonic()
        after = _works(access_ids)
        transaction.set_rollback(True)
    if works is not None:
        for pk, (access_id, status, *figures) in after.items():
            works[pk] = WorkAfter(access_id, status, tuple(figures))
    held = {pk: after[pk][1] for pk in planned if pk in after}
    unstable = {pk: held.get(pk) or "(gone)" for pk, to in planned.items() if held.get(pk) != to}
    return _sums(before, after), unstable


def simulate(
    flips: list[PlannedRow],
    access_ids: list[int],
    progress: Callable[[str], None] | None = None,
    *,
    stamps: Mapping[tuple[str, int], object] | None = None,
    works: dict[int, WorkAfter] | None = None,
) -> tuple[dict[int, AccessSums], dict[int, str]]:
    """Per access, the saved pay now and after the host's recompute of the flipped rows; and
    the planned works that recompute would not keep. ``stamps``: the dates an undo restores,
    by (entity kind, id). ``works``, when given, receives every work as the host's code left
    it."""
    return with_backoff(
        lambda: _simulate_once(flips, access_ids, progress, works, stamps or {}),
        deadline_seconds=conf.get("RETRY_SECONDS"),
        progress=progress,
        what="pricing",
    )
