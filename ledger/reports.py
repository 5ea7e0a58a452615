"""Turn planned rows and prices into the reports operators and finance review."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Sum

from ledger import host
from ledger.models import EntityKind
from ledger.planners.held import HeldRows
from ledger.planners.rows import PlannedRow
from ledger.pricing import AccessPrice
from ledger.schema import (
    AccessPlan,
    CurrencyTotals,
    Exclusion,
    PlanReport,
    PlanTotals,
    ScanOpportunity,
    ScanReport,
)

ZERO = Decimal(0)


def _excluded(rows: list[PlannedRow] | HeldRows) -> dict[str, tuple[list[int], list[int]]]:
    """Per exclusion reason: the work ids and the visit ids it leaves alone, sorted."""
    if isinstance(rows, HeldRows):
        return rows.excluded()
    works: dict[str, set[int]] = defaultdict(set)
    visits: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r.excluded:
            if r.entity_kind == EntityKind.completed_work:
                works[r.excluded].add(r.entity_id)
            else:
                visits[r.excluded].append(r.entity_id)
    return {
        reason: (sorted(works[reason]), sorted(visits[reason]))
        for reason in set(works) | set(visits)
    }


def _exclusions(excluded: dict[str, tuple[list[int], list[int]]]) -> list[Exclusion]:
    return [
        Exclusion(
            reason=reason,
            works=len(excluded[reason][0]),
            visits=len(excluded[reason][1]),
            completed_work_ids=excluded[reason][0],
            visit_ids=excluded[reason][1],
        )
        for reason in sorted(excluded)
    ]


def _counts(rows: list[PlannedRow] | HeldRows) -> dict[int, list[int]]:
    """Per access: [works, visits] flipped."""
    if isinstance(rows, HeldRows):
        return defaultdict(lambda: [0, 0], rows.counts_by_access())
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if not r.excluded and r.access_id is not None:
            counts[r.access_id][0 if r.entity_kind == EntityKind.completed_work else 1] += 1
    return counts


SUSPENDED_NOTE = (
    "Suspended accesses are recomputed like any other: their accrual follows the corrected "
    "statuses (the host's bulk recompute skips suspended workers, which would leave it stale)."
)


ORDER_NOTE = (
    "{n} accesses ({shown}) have a work of a payment unit whose child units the worker never "
    "worked, under a worked parent unit: the host's recompute of these depends on the order "
    "its query returns their works (it has none); they are priced in id order."
)


def plan_report(
    batch: str | None,
    state: str,
    planner: str,
    reason: str,
    scope: dict,
    digest: str | None,
    rows: list[PlannedRow] | HeldRows,
    prices: dict[int, AccessPrice],
    duplicate_entries: list[str] | None = None,
    *,
    pricing: str = "projection",
    order_dependent: Iterable[int] = (),
) -> PlanReport:
    counts = _counts(rows)
    accesses = []
    for access_id, p in sorted(prices.items()):
        works, visits = counts[access_id]
        accesses.append(
            AccessPlan(
                access_id=access_id,
                opportunity_id=p.opportunity_id,
                opportunity=p.opportunity,
                worker=p.worker,
                currency=p.currency,
                suspended=p.suspended,
                works=works,
                visits=visits,
                accrual_now=p.accrual_now,
                projected_accrual=p.projected_accrual,
                worker_accrual_change=p.worker_change,
                worker_accrual_change_usd=p.worker_change_usd,
                org_accrual_change=p.org_change,
                org_accrual_change_usd=p.org_change_usd,
                paid_to_date=p.paid_to_date,
                overpayment_exposure=p.overpayment_exposure,
            )
        )
    by_currency: dict[str, CurrencyTotals] = {}
    for a in accesses:
        t = by_currency.setdefault(
            a.currency,
            CurrencyTotals(
                currency=a.currency, accesses=0, works=0, visits=0, worker_accrual_change=0,
                org_accrual_change=0, paid_to_date=ZERO, overpayment_exposure=ZERO,
            ),
        )  # fmt: skip
        t.accesses += 1
        t.works += a.works
        t.visits += a.visits
        t.worker_accrual_change += a.worker_accrual_change
        t.org_accrual_change += a.org_accrual_change
        t.paid_to_date += a.paid_to_date
        t.overpayment_exposure += a.overpayment_exposure
    excluded = _excluded(rows)
    excluded_works = {pk for works, _ in excluded.values() for pk in works}
    totals = PlanTotals(
        accesses=len(accesses),
        suspended_accesses=sum(1 for a in accesses if a.suspended),
        works=sum(a.works for a in accesses),
        visits=sum(a.visits for a in accesses),
        excluded_works=len(excluded_works),
        worker_accrual_change_usd=sum((a.worker_accrual_change_usd for a in accesses), ZERO),
        org_accrual_change_usd=sum((a.org_accrual_change_usd for a in accesses), ZERO),
        by_currency=[by_currency[c] for c in sorted(by_currency)],
    )
    return PlanReport(
        batch=batch,
        state=state,
        planner=str(planner),
        reason=reason,
        scope=scope,
        plan_digest=digest,
        accesses=accesses,
        exclusions=_exclusions(excluded),
        totals=totals,
        duplicate_entries=duplicate_entries or [],
        notes=_notes(totals, sorted(order_dependent)),
        pricing=pricing,
    )


def _notes(totals: PlanTotals, order_dependent: list[int]) -> list[str]:
    notes = [SUSPENDED_NOTE] if totals.suspended_accesses else []
    if order_dependent:
        shown = ", ".join(map(str, order_dependent[:10]))
        shown += " …" if len(order_dependent) > 10 else ""
        notes.append(ORDER_NOTE.format(n=len(order_dependent), shown=shown))
    return notes


def scan_report(rows: list[PlannedRow]) -> ScanReport:
    per: dict[int, dict] = defaultdict(
        lambda: {"accesses": set(), "suspended": set(), "works": 0, "visits": 0, "excluded": 0}
    )
    for r in rows:
        s = per[r.opportunity_id]
        if r.excluded:
            if r.entity_kind == EntityKind.completed_work:
                s["excluded"] += 1
            continue
        s["accesses"].add(r.access_id)
        if r.suspended:
            s["suspended"].add(r.access_id)
        s["works" if r.entity_kind == EntityKind.completed_work else "visits"] += 1
    accrued = _accrued_on_works(
        [r.entity_id for r in rows if r.entity_kind == "completed_work" and not r.excluded]
    )
    opportunities = {
        pk: (uuid, name, code or "")
        for pk, uuid, name, code in host.Opportunity.objects.filter(pk__in=list(per)).values_list(
            "pk", "opportunity_id", "name", "currency__code"
        )
    }
    return ScanReport(
        opportunities=[
            ScanOpportunity(
                opportunity_id=opp_id,
                opportunity=str(opportunities[opp_id][0]),
                name=opportunities[opp_id][1],
                currency=opportunities[opp_id][2],
                accesses=len(s["accesses"]),
                suspended_accesses=len(s["suspended"]),
                works=s["works"],
                visits=s["visits"],
                excluded_works=s["excluded"],
                accrued_on_over_cap_works=accrued.get(opp_id, 0),
            )
            for opp_id, s in sorted(per.items())
        ]
    )


def _accrued_on_works(work_ids: list[int]) -> dict[int, int]:
    """What the over-cap works have accrued so far, per opportunity (a fact, not a forecast)."""
    if not work_ids:
        return {}
    return dict(
        host.CompletedWork.objects.filter(pk__in=work_ids)
        .values("opportunity_access__opportunity_id")
        .annotate(total=Sum("saved_payment_accrued"))
        .order_by()
        .values_list("opportunity_access__opportunity_id", "total")
    )
