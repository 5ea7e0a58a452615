"""What a planned batch will cost, by the host's own accrual rules.

By default the plan is priced by :mod:`ledger.accrual_rules`: the host's ``update_status``
projected in SQL for every affected access at once, from one read-only snapshot — no row is
written or locked, no host code is called per worker, so a plan of thousands of workers never
holds up their live submissions. ``exact=True`` prices it with the host's own code instead
(:mod:`ledger.pricing_exact`): the flips written in a transaction that is rolled back, the
host's recompute run there for each access. The two agree (the contract suite's differential
test holds them to it on random data, in the real host too); the exact path stays for when
an operator wants the host's code itself to have spoken, at the cost of locking the accesses'
rows for as long as it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Sum

from ledger import accrual_rules, host
from ledger.accrual_rules import AccessSums
from ledger.host import OpportunityAccess, Payment
from ledger.planners.rows import PlannedRow
from ledger.sql import db_now, read_only_snapshot

ZERO = Decimal(0)


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


@dataclass
class Pricing:
    prices: dict[int, AccessPrice]
    # Planned works the host's recompute would not leave with their planned status: id -> the
    # status it would give them instead.
    unstable: dict[int, str]
    # Accesses whose recompute depends on the order the host's unordered query returns their
    # works (a child unit never worked under a worked parent unit); priced in id order.
    order_dependent: set[int] = field(default_factory=set)


def _described(access_ids: list[int]) -> dict[int, AccessPrice]:
    """Who and what each access is, its accrual now and what it has been paid."""
    accesses = list(
        OpportunityAccess.objects.filter(pk__in=access_ids).select_related("opportunity", "user")
    )
    currencies = host.currency_codes({a.opportunity_id for a in accesses})
    paid = dict(
        Payment.objects.filter(opportunity_access_id__in=access_ids)
        .values("opportunity_access_id")
        .annotate(total=Sum("amount"))
        .order_by()
        .values_list("opportunity_access_id", "total")
    )
    return {
        a.pk: AccessPrice(
            access_id=a.pk,
            opportunity_id=a.opportunity_id,
            opportunity=str(a.opportunity.opportunity_id),
            worker=a.user.username or a.user.name or str(a.user_id),
            currency=currencies.get(a.opportunity_id) or "",
            suspended=a.suspended,
            accrual_now=a.payment_accrued,
            works_accrued_now=0,
            paid_to_date=paid.get(a.pk) or ZERO,
        )
        for a in accesses
    }


def _priced(described: dict[int, AccessPrice], sums: dict[int, AccessSums]) -> dict:
    prices = {}
    for access_id, p in sorted(described.items()):
        s = sums.get(access_id) or AccessSums()
        p.works_accrued_now = s.pay_now
        p.worker_change = s.pay_after - s.pay_now
        p.worker_change_usd = s.usd_after - s.usd_now
        p.org_change = s.org_after - s.org_now
        p.org_change_usd = s.org_usd_after - s.org_usd_now
        prices[access_id] = p
    return prices


def price(
    rows: Iterable[PlannedRow],
    progress: Callable[[str], None] | None = None,
    *,
    exact: bool = False,
) -> Pricing:
    """Per access: the accrual change the flips in ``rows`` would cause, by the host's rules;
    and the planned works whose planned status the host's recompute would not keep.

    Rows of any target status price alike (an undo's inverse rows too). A plan whose pricing
    needs an exchange rate that is not stored is refused: the host would fetch it over the
    network in the middle of its recompute.
    """
    flips = [r for r in rows if not r.excluded]
    access_ids = sorted({r.access_id for r in flips if r.access_id is not None})
    if not access_ids:
        return Pricing({}, {})
    if progress:
        how = "by the host's own code" if exact else "by the host's rules"
        progress(f"pricing {len(flips)} flips across {len(access_ids)} accesses {how}")
    with read_only_snapshot():
        described = _described(access_ids)
        # Read in the same snapshot: refuses a plan that would make the host fetch a rate,
        # before the exact path would run the host's code into that fetch.
        projection = accrual_rules.project(flips, described, now=db_now(), progress=progress)
    if not exact:
        prices = _priced(described, projection.sums)
        return Pricing(prices, projection.unstable, projection.order_dependent)

    from ledger import pricing_exact

    sums, unstable = pricing_exact.simulate(flips, sorted(described), progress)
    return Pricing(_priced(described, sums), unstable, projection.order_dependent)
