"""The host's completed-work status and pay rules (``update_status``).

Set-based: whatever the number of works, one call issues a constant number of queries (works'
visit counts per deliver unit, deliver units, child works, exchange rates) and one
``bulk_update``.
"""

from __future__ import annotations

import bisect
import datetime
from collections import defaultdict
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Count, Q
from django.utils import timezone

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    DeliverUnit,
    ExchangeRate,
    OpportunityAccess,
    PaymentUnit,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)

CENT = Decimal("0.01")
SAVED_FIELDS = [
    "status",
    "status_modified_date",
    "reason",
    "saved_completed_count",
    "saved_approved_count",
    "saved_payment_accrued",
    "saved_payment_accrued_usd",
    "saved_org_payment_accrued",
    "saved_org_payment_accrued_usd",
]


class _Counts:
    __slots__ = ("total", "approved", "rejected", "reasons")

    def __init__(self) -> None:
        self.total: dict[int, int] = defaultdict(int)
        self.approved: dict[int, int] = defaultdict(int)
        self.rejected = 0
        self.reasons: list[str] = []


def _visit_counts(work_ids: list[int]) -> dict[int, _Counts]:
    """Per work: visits per deliver unit (all, approved-and-agreed) and rejected visits."""
    counts: dict[int, _Counts] = defaultdict(_Counts)
    if not work_ids:
        return counts
    rows = (
        UserVisit.objects.filter(completed_work_id__in=work_ids)
        .values("completed_work_id", "deliver_unit_id")
        .annotate(
            total=Count("id"),
            approved=Count(
                "id",
                filter=Q(
                    status=VisitValidationStatus.approved,
                    review_status=VisitReviewStatus.agree,
                ),
            ),
            rejected=Count("id", filter=Q(status=VisitValidationStatus.rejected)),
        )
        .order_by()
    )
    for row in rows:
        c = counts[row["completed_work_id"]]
        c.total[row["deliver_unit_id"]] += row["total"]
        c.approved[row["deliver_unit_id"]] += row["approved"]
        c.rejected += row["rejected"]
    rejected_ids = [wid for wid, c in counts.items() if c.rejected]
    if rejected_ids:
        reasons = (
            UserVisit.objects.filter(
                completed_work_id__in=rejected_ids, status=VisitValidationStatus.rejected
            )
            .exclude(reason__isnull=True)
            .exclude(reason="")
            .order_by("id")
            .values_list("completed_work_id", "reason")
        )
        for wid, reason in reasons:
            counts[wid].reasons.append(reason)
    return counts


def _unit_count(per_unit: dict[int, int], required: list[int], optional: list[int]) -> int:
    """The host's count of earned units: min over required units, capped by optional ones."""
    if required:
        number = min(per_unit.get(du, 0) for du in required)
    else:
        number = sum(per_unit.get(du, 0) for du in optional)
    if optional:
        number = min(number, sum(per_unit.get(du, 0) for du in optional))
    return number


class _RateTable:
    """Exchange rates of one currency, looked up by date without a query per work."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.dates: list[datetime.date] = []
        self.rates: list[Decimal] = []
        if currency != "USD":
            for rate_date, rate in (
                ExchangeRate.objects.filter(currency_code=currency)
                .order_by("rate_date")
                .values_list("rate_date", "rate")
            ):
                self.dates.append(rate_date)
                self.rates.append(rate)

    def rate_on(self, when: datetime.datetime | None) -> Decimal | None:
        if self.currency == "USD":
            return Decimal(1)
        day = (when or timezone.now()).date()
        index = bisect.bisect_right(self.dates, day) - 1
        return self.rates[index] if index >= 0 else None

    def to_usd(self, amount: int, when: datetime.datetime | None) -> Decimal:
        rate = self.rate_on(when)
        if not rate:
            return Decimal(0)
        return (Decimal(amount) / rate).quantize(CENT, rounding=ROUND_HALF_UP)


def update_status(
    completed_works: Iterable[CompletedWork],
    opportunity_access: OpportunityAccess,
    compute_payment: bool = True,
) -> list[CompletedWork]:
    """Set each work's status and cached counts and pay from its visits; return changed works.

    Never sets ``over_limit``; an ``over_limit`` work whose visits are approved goes back to
    ``approved``. That is why visits and their work must always be corrected together.
    """
    works = list(completed_works)
    if not works:
        return []
    opportunity = opportunity_access.opportunity
    unit_ids = {w.payment_unit_id for w in works}
    required: dict[int, list[int]] = defaultdict(list)
    optional: dict[int, list[int]] = defaultdict(list)
    children: dict[int, list[int]] = defaultdict(list)
    for du_id, pu_id, is_optional in DeliverUnit.objects.filter(
        payment_unit_id__in=unit_ids
    ).values_list("id", "payment_unit_id", "optional"):
        (optional if is_optional else required)[pu_id].append(du_id)
    child_unit_of: dict[int, int] = {}
    for child_id, parent_id in PaymentUnit.objects.filter(
        parent_payment_unit_id__in=unit_ids
    ).values_list("id", "parent_payment_unit_id"):
        children[parent_id].append(child_id)
        child_unit_of[child_id] = parent_id

    # Child works of the same access and entity cap their parent's count.
    child_works: dict[tuple[int, str | None], list[tuple[int, int]]] = defaultdict(list)
    if child_unit_of:
        entity_ids = {w.entity_id for w in works}
        for cw_id, pu_id, entity_id in CompletedWork.objects.filter(
            opportunity_access_id=opportunity_access.pk,
            payment_unit_id__in=list(child_unit_of),
            entity_id__in=entity_ids,
        ).values_list("id", "payment_unit_id", "entity_id"):
            child_works[(child_unit_of[pu_id], entity_id)].append((cw_id, pu_id))
        # Child units whose own works are in this batch already have their deliver units;
        # loading them again would count each optional form twice.
        unloaded = [pu_id for pu_id in child_unit_of if pu_id not in unit_ids]
        if child_works and unloaded:
            for _du_id, pu_id, is_optional in DeliverUnit.objects.filter(
                payment_unit_id__in=unloaded
            ).values_list("id", "payment_unit_id", "optional"):
                (optional if is_optional else required)[pu_id].append(_du_id)

    all_child_ids = [cw_id for pairs in child_works.values() for cw_id, _ in pairs]
    counts = _visit_counts([w.pk for w in works] + all_child_ids)
    rates = _RateTable(opportunity.currency) if compute_payment else None
    # Worker and organisation pay per unit, in one query.
    unit_pay = {
        pk: (amount, org_amount)
        for pk, amount, org_amount in PaymentUnit.objects.filter(id__in=unit_ids).values_list(
            "id", "amount", "org_amount"
        )
    }

    changed: list[CompletedWork] = []
    for work in works:
        c = counts.get(work.pk)
        if c is None or not c.total:
            continue
        before = tuple(getattr(work, f) for f in SAVED_FIELDS)
        pu = work.payment_unit_id
        completed = _unit_count(c.total, required[pu], optional[pu])
        approved = _unit_count(c.approved, required[pu], optional[pu])
        if children.get(pu):
            child_total = child_approved = 0
            for cw_id, child_pu in child_works.get((pu, work.entity_id), []):
                cc = counts.get(cw_id)
                if cc is not None:
                    child_total += _unit_count(cc.total, required[child_pu], optional[child_pu])
                    child_approved += _unit_count(
                        cc.approved, required[child_pu], optional[child_pu]
                    )
            completed = min(completed, child_total)
            approved = min(approved, child_approved)

        if opportunity.auto_approve_payments:
            if c.rejected:
                work.status = CompletedWorkStatus.rejected
                work.reason = "\n".join(c.reasons)
            elif required[pu] and all(c.approved.get(du, 0) > 0 for du in required[pu]):
                work.status = CompletedWorkStatus.approved
            elif work.status == CompletedWorkStatus.incomplete:
                work.status = CompletedWorkStatus.pending

        if compute_payment and completed >= 1:
            work.saved_completed_count = completed
            work.saved_approved_count = approved
            if approved > 0 and work.status == CompletedWorkStatus.approved:
                pay = approved * unit_pay[pu][0]
                org_pay = approved * unit_pay[pu][1]
                work.saved_payment_accrued = pay
                work.saved_org_payment_accrued = org_pay
                work.saved_payment_accrued_usd = rates.to_usd(pay, work.status_modified_date)
                work.saved_org_payment_accrued_usd = rates.to_usd(
                    org_pay, work.status_modified_date
                )
            else:
                work.saved_payment_accrued = 0
                work.saved_org_payment_accrued = 0
                work.saved_payment_accrued_usd = Decimal(0)
                work.saved_org_payment_accrued_usd = Decimal(0)

        if tuple(getattr(work, f) for f in SAVED_FIELDS) != before:
            changed.append(work)

    if changed:
        CompletedWork.objects.bulk_update(changed, SAVED_FIELDS)
    return changed
