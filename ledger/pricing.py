"""What a planned batch will cost, priced by the host's own accrual rules.

The figures must not come from a second formula that can drift from the host's: the planned
flips are written inside a transaction that is always rolled back, the host's ``update_status``
recomputes every work of each affected access there — exactly what the recompute after apply
will do — and the saved pay fields are read before and after. So the projected accrual is the
one the apply will produce, and a planned work the host would move elsewhere is seen before it
is applied. The simulation locks its rows NOWAIT and holds them only for its own short
transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum

from ledger import conf, host
from ledger.errors import LedgerError
from ledger.host import CompletedWork, OpportunityAccess, Payment, UserVisit
from ledger.models import EntityKind
from ledger.planners.rows import PlannedRow, table
from ledger.retry import with_backoff
from ledger.sql import db_now, ids_where, int_array, lock_rows_patiently, text_array

ZERO = Decimal(0)
PROGRESS_EVERY = 5.0  # seconds between progress lines while pricing
_SUMS = (
    "saved_payment_accrued",
    "saved_payment_accrued_usd",
    "saved_org_payment_accrued",
    "saved_org_payment_accrued_usd",
)


@dataclass
class AccessPrice:
    access_id: int
    opportunity_id: int
    opportunity: str
    worker: str
    currency: str
    suspended: bool
    accrual_now: int
    works_accrued_now: int
    worker_change: int = 0
    worker_change_usd: Decimal = ZERO
    org_change: int = 0
    org_change_usd: Decimal = ZERO
    paid_to_date: Decimal = ZERO

    @property
    def projected_accrual(self) -> int:
        return self.works_accrued_now + self.worker_change

    @property
    def overpayment_exposure(self) -> Decimal:
        return max(ZERO, self.paid_to_date - self.projected_accrual)


def _access_sums(access_ids: list[int]) -> dict[int, tuple]:
    rows = (
        CompletedWork.objects.filter(opportunity_access_id__in=access_ids)
        .values("opportunity_access_id")
        .annotate(**{name: Sum(name) for name in _SUMS})
        .order_by()
    )
    return {r["opportunity_access_id"]: tuple(r[name] or 0 for name in _SUMS) for r in rows}


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


def _refuse_network_rates(flips: list[PlannedRow], accesses: dict) -> None:
    """Refuse a plan whose pricing would make the host fetch an exchange rate over the network.

    Only work flipped to approved is priced at a rate (today's, as the projector stamps it).
    """
    opportunities = {
        accesses[r.access_id].opportunity_id
        for r in flips
        if r.entity_kind == EntityKind.completed_work
        and r.to_status == host.CompletedWorkStatus.approved
        and r.access_id in accesses
    }
    if not opportunities:
        return
    codes = host.currency_codes(opportunities)
    missing = host.missing_exchange_rates(codes.values(), host.today())
    if missing:
        raise LedgerError(
            f"no stored exchange rate on or before {host.today()} for {', '.join(missing)}: "
            "pricing approved work would make the host fetch one from its external rates "
            "service; store the rate first"
        )


@dataclass
class Pricing:
    prices: dict[int, AccessPrice]
    # Planned works the host's recompute would not leave with their planned status: id -> the
    # status it would give them instead.
    unstable: dict[int, str]


def _simulate(
    flips: list[PlannedRow],
    accesses: dict,
    progress: Callable[[str], None] | None = None,
    stamps: Mapping[tuple[str, int], object] | None = None,
) -> tuple[dict, dict, dict[int, str]]:
    """Flip, let the host recompute, read the figures, roll back. One attempt."""
    access_ids = sorted(accesses)
    planned = {r.entity_id: r.to_status for r in flips if r.entity_kind == "completed_work"}
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
        stamps = stamps or {}
        for model, kind in ((CompletedWork, "completed_work"), (UserVisit, "visit")):
            _write_statuses(
                model,
                [
                    (r.entity_id, r.to_status, stamps.get((kind, r.entity_id)) or stamp)
                    for r in flips
                    if r.entity_kind == kind
                ],
                deadline,
            )
        before = _access_sums(access_ids)  # what the works hold now (saved figures untouched)
        total, shown = len(access_ids), time.monotonic()
        for done, access_id in enumerate(access_ids, start=1):
            host.simulate_recompute(accesses[access_id])
            if progress and (time.monotonic() - shown >= PROGRESS_EVERY or done == total):
                progress(f"priced {done}/{total} accesses by the host's recompute")
                shown = time.monotonic()
        after = _access_sums(access_ids)
        held = dict(CompletedWork.objects.filter(pk__in=list(planned)).values_list("pk", "status"))
        transaction.set_rollback(True)
    unstable = {pk: held.get(pk) or "(gone)" for pk, to in planned.items() if held.get(pk) != to}
    return before, after, unstable


def price(
    rows: Iterable[PlannedRow],
    progress: Callable[[str], None] | None = None,
    stamps: Mapping[tuple[str, int], object] | None = None,
) -> Pricing:
    """Per access: the accrual change the flips in ``rows`` would cause, by the host's rules;
    and the planned works whose planned status the host's recompute would not keep.

    ``stamps`` maps (entity kind, id) to the ``status_modified_date`` a flip restores (an
    undo); every other flip is stamped with the apply's time, as the projector does.
    """
    flips = [r for r in rows if not r.excluded]
    access_ids = sorted({r.access_id for r in flips if r.access_id is not None})
    if not access_ids:
        return Pricing({}, {})

    accesses = {
        a.pk: a
        for a in OpportunityAccess.objects.filter(pk__in=access_ids).select_related(
            "opportunity", "user"
        )
    }
    _refuse_network_rates(flips, accesses)
    currencies = host.currency_codes({a.opportunity_id for a in accesses.values()})
    paid = dict(
        Payment.objects.filter(opportunity_access_id__in=access_ids)
        .values("opportunity_access_id")
        .annotate(total=Sum("amount"))
        .order_by()
        .values_list("opportunity_access_id", "total")
    )
    if progress:
        progress(
            f"pricing {len(flips)} flips across {len(access_ids)} accesses by the host's rules"
        )
    before, after, unstable = with_backoff(
        lambda: _simulate(flips, accesses, progress, stamps),
        deadline_seconds=conf.get("RETRY_SECONDS"),
        progress=progress,
        what="pricing",
    )

    prices: dict[int, AccessPrice] = {}
    for access_id in access_ids:
        access = accesses[access_id]
        b = before.get(access_id, (0, ZERO, 0, ZERO))
        a = after.get(access_id, (0, ZERO, 0, ZERO))
        prices[access_id] = AccessPrice(
            access_id=access_id,
            opportunity_id=access.opportunity_id,
            opportunity=str(access.opportunity.opportunity_id),
            worker=access.user.username or access.user.name or str(access.user_id),
            currency=currencies.get(access.opportunity_id) or "",
            suspended=access.suspended,
            accrual_now=access.payment_accrued,
            works_accrued_now=b[0],
            worker_change=a[0] - b[0],
            worker_change_usd=Decimal(a[1]) - Decimal(b[1]),
            org_change=a[2] - b[2],
            org_change_usd=Decimal(a[3]) - Decimal(b[3]),
            paid_to_date=paid.get(access_id) or ZERO,
        )
    return Pricing(prices, unstable)
