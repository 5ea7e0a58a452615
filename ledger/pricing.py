"""What a planned batch will cost, priced by the host's own accrual rules.

The figures must not come from a second formula that can drift from the host's: the planned
flips are written inside a transaction that is always rolled back, the host's ``update_status``
recomputes the flipped works there, and the saved pay fields are read before and after. The
simulation holds row locks only for its own short transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum

from commcare_connect.opportunity.models import (
    CompletedWork,
    OpportunityAccess,
    Payment,
    UserVisit,
)
from commcare_connect.opportunity.utils.completed_work import update_status
from ledger.models import EntityKind
from ledger.planners.rows import PlannedRow, table

ZERO = Decimal(0)
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


def _write_statuses(model, pairs: list[tuple[int, str]]) -> None:
    if not pairs:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {table(model)} t SET status = u.status
                FROM unnest(%s::bigint[], %s::text[]) AS u(id, status) WHERE t.id = u.id""",
            [[p[0] for p in pairs], [p[1] for p in pairs]],
        )


def price(rows: Iterable[PlannedRow]) -> dict[int, AccessPrice]:
    """Per access: the accrual change the flips in ``rows`` would cause, by the host's rules."""
    flips = [r for r in rows if not r.excluded]
    works_by_access: dict[int, list[int]] = defaultdict(list)
    for r in flips:
        if r.entity_kind == EntityKind.completed_work and r.access_id is not None:
            works_by_access[r.access_id].append(r.entity_id)
    access_ids = sorted({r.access_id for r in flips if r.access_id is not None})
    if not access_ids:
        return {}

    accesses = {
        a.pk: a
        for a in OpportunityAccess.objects.filter(pk__in=access_ids).select_related(
            "opportunity", "user"
        )
    }
    paid = dict(
        Payment.objects.filter(opportunity_access_id__in=access_ids)
        .values("opportunity_access_id")
        .annotate(total=Sum("amount"))
        .order_by()
        .values_list("opportunity_access_id", "total")
    )
    before = _access_sums(access_ids)

    with transaction.atomic():
        _write_statuses(
            UserVisit, [(r.entity_id, r.to_status) for r in flips if r.entity_kind == "visit"]
        )
        _write_statuses(
            CompletedWork,
            [(r.entity_id, r.to_status) for r in flips if r.entity_kind == "completed_work"],
        )
        for access_id, work_ids in works_by_access.items():
            update_status(CompletedWork.objects.filter(pk__in=work_ids), accesses[access_id], True)
        after = _access_sums(access_ids)
        transaction.set_rollback(True)

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
            currency=access.opportunity.currency,
            suspended=access.suspended,
            accrual_now=access.payment_accrued,
            works_accrued_now=b[0],
            worker_change=a[0] - b[0],
            worker_change_usd=Decimal(a[1]) - Decimal(b[1]),
            org_change=a[2] - b[2],
            org_change_usd=Decimal(a[3]) - Decimal(b[3]),
            paid_to_date=paid.get(access_id) or ZERO,
        )
    return prices
