"""The host's completed-work status and pay rules (``update_status``), set-based.

The host's ``CompletedWorkUpdater`` reads each work's visits with a query per work (and more
for child payment units). This module gives the same results for every input with a fixed
number of queries per call, whatever the number of works: the works, the payment-unit tree,
its deliver units, the child works, the visit counts, the reasons of rejected works, the
exchange rates, one ``bulk_update``, then the access's total and its save.

The host's rules, as this module applies them, for each work of the queryset that has at
least one visit:

* counts per deliver unit of its visits: all of them, and those approved *and* agreed;
* ``completed`` / ``approved``: the minimum of those counts over the unit's required deliver
  units (0 when it has none), capped by their total over its optional deliver units when it
  has some, and by the sum over the child works (same access, same entity) of child payment
  units — where a child payment unit only counts when some work of the queryset has it;
* when the opportunity auto-approves payments: a rejected visit makes the work rejected, its
  ``reason`` the newline-join of the reasons of *all* its visits that have one; else the work
  is approved when every required deliver unit has an approved-and-agreed visit and, if the
  unit has optional deliver units, at least one of those has one too; else an incomplete work
  becomes pending. Nothing here sets over_limit, and an over_limit work whose visits are
  approved goes back to approved;
* when ``completed >= 1``: the saved counts, and the pay: ``approved × amount`` (and
  ``× org_amount``) when ``approved > 0`` and the work is approved, else 0; the USD figures are
  the pay divided by ``visit_import.get_exchange_rate(currency, status_modified_date)`` — the
  integer 1 for USD — and are rounded to cents by PostgreSQL when stored (half away from zero);
* every such work is written back (status, reason, stamp and the six saved fields), changed or
  not, in one ``bulk_update``.

Then, when ``compute_payment`` is true, ``opportunity_access.payment_accrued`` is assigned the
sum of ``saved_payment_accrued`` over all of the access's works and the access object is saved
(a full ``save()``). As in the host, ``compute_payment`` does not stop the works' pay from being
recomputed; it only decides whether the access is updated.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.utils.timezone import now

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

SAVED_FIELDS = [
    "reason",
    "status",
    "status_modified_date",
    "saved_completed_count",
    "saved_approved_count",
    "saved_payment_accrued",
    "saved_payment_accrued_usd",
    "saved_org_payment_accrued",
    "saved_org_payment_accrued_usd",
]

_UNIT_TREE_SQL = f"""
WITH RECURSIVE tree(id) AS (
    SELECT id FROM {PaymentUnit._meta.db_table} WHERE id = ANY(%s::bigint[])
    UNION
    SELECT child.id FROM {PaymentUnit._meta.db_table} child
    JOIN tree ON child.parent_payment_unit_id = tree.id
)
SELECT unit.id, unit.parent_payment_unit_id, unit.amount, unit.org_amount
FROM {PaymentUnit._meta.db_table} unit JOIN tree ON tree.id = unit.id
"""


class _Visits:
    """One work's visit counts per deliver unit."""

    __slots__ = ("total", "approved", "agreed", "rejected")

    def __init__(self) -> None:
        self.total: dict[int, int] = defaultdict(int)
        self.approved: dict[int, int] = defaultdict(int)  # status approved
        self.agreed: dict[int, int] = defaultdict(int)  # approved and review agree
        self.rejected = 0


def _count(per_unit: dict[int, int], required: list[int], optional: list[int]) -> int:
    number = min((per_unit.get(du, 0) for du in required), default=0)
    if optional:
        number = min(number, sum(per_unit.get(du, 0) for du in optional))
    return number


class _RateLookup:
    """``visit_import.get_exchange_rate`` per work, from one read of the stored rates.

    A date with a stored, non-zero rate is answered from memory; anything else (no currency,
    USD, no rate on or before the date, a zero rate) is handed to ``get_exchange_rate`` itself,
    which answers or raises exactly as the host does — and, for a missing rate, calls the
    host's fetch from the external service.
    """

    def __init__(self, opportunity) -> None:
        self.opportunity = opportunity
        self.code: str | None = None
        self.upper: str | None = None
        self.dates: list | None = None
        self.rates: list = []
        self.date_field = ExchangeRate._meta.get_field("rate_date")

    def _load(self) -> None:
        # Read as the host reads it, through the opportunity's currency foreign key.
        self.code = self.opportunity.currency_code
        self.upper = self.code.upper() if self.code else None
        self.dates = []
        if self.upper is None or self.upper == "USD":
            return
        for rate_date, rate in (
            ExchangeRate.objects.filter(currency_code=self.upper)
            .order_by("rate_date")
            .values_list("rate_date", "rate")
        ):
            self.dates.append(rate_date)
            self.rates.append(rate)

    def __call__(self, when):
        from commcare_connect.opportunity.visit_import import get_exchange_rate

        if self.dates is None:
            self._load()
        if self.upper is None or self.upper == "USD":
            return get_exchange_rate(self.code, when)
        # The date the host's ``rate_date__lte`` lookup compares with.
        day = self.date_field.to_python(when or now().date())
        index = bisect.bisect_right(self.dates, day) - 1
        if index >= 0 and self.rates[index]:
            return self.rates[index]
        return get_exchange_rate(self.code, when)


class _Recompute:
    def __init__(self, access: OpportunityAccess, works: list[CompletedWork]) -> None:
        self.access = access
        self.opportunity = access.opportunity
        self.works = works
        # payment unit id -> (parent id, amount, org_amount), for the works' units and every
        # unit below them.
        self.units: dict[int, tuple[int | None, int, int]] = {}
        self.required: dict[int, list[int]] = defaultdict(list)
        self.optional: dict[int, list[int]] = defaultdict(list)
        self.children: dict[int, list[int]] = defaultdict(list)  # all child units
        self.batch_children: dict[int, list[int]] = defaultdict(list)  # those in the batch
        # (access id, entity id, payment unit id) -> work ids
        self.works_by_key: dict[tuple, list[int]] = defaultdict(list)
        self.visits: dict[int, _Visits] = {}
        self.reasons: dict[int, list[str]] = defaultdict(list)

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        batch_units = {w.payment_unit_id for w in self.works}
        with connection.cursor() as cursor:
            cursor.execute(_UNIT_TREE_SQL, [sorted(batch_units)])
            for pk, parent, amount, org_amount in cursor.fetchall():
                self.units[pk] = (parent, amount, org_amount)
        for pk, (parent, _, _) in self.units.items():
            if parent is not None:
                self.children[parent].append(pk)
                if pk in batch_units:
                    self.batch_children[parent].append(pk)
        for du_id, pu_id, optional in DeliverUnit.objects.filter(
            payment_unit_id__in=list(self.units)
        ).values_list("id", "payment_unit_id", "optional"):
            (self.optional if optional else self.required)[pu_id].append(du_id)

        related_ids: set[int] = set()
        descendants = [pk for pk, (parent, _, _) in self.units.items() if parent in self.units]
        if descendants:
            accesses = {w.opportunity_access_id for w in self.works}
            entities = {w.entity_id for w in self.works}
            same_entity = Q(entity_id__in=[e for e in entities if e is not None])
            if None in entities:
                same_entity |= Q(entity_id__isnull=True)
            for pk, access_id, entity_id, pu_id in (
                CompletedWork.objects.filter(
                    same_entity,
                    opportunity_access_id__in=accesses,
                    payment_unit_id__in=descendants,
                )
                .order_by()
                .values_list("id", "opportunity_access_id", "entity_id", "payment_unit_id")
            ):
                self.works_by_key[(access_id, entity_id, pu_id)].append(pk)
                related_ids.add(pk)

        work_ids = {w.pk for w in self.works} | related_ids
        rows = (
            UserVisit.objects.filter(completed_work_id__in=work_ids)
            .values("completed_work_id", "deliver_unit_id")
            .annotate(
                total=Count("id"),
                approved=Count("id", filter=Q(status=VisitValidationStatus.approved)),
                agreed=Count(
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
            v = self.visits.get(row["completed_work_id"])
            if v is None:
                v = self.visits[row["completed_work_id"]] = _Visits()
            du = row["deliver_unit_id"]
            v.total[du] += row["total"]
            v.approved[du] += row["approved"]
            v.agreed[du] += row["agreed"]
            v.rejected += row["rejected"]

        if self.opportunity.auto_approve_payments:
            rejected = [
                w.pk for w in self.works if w.pk in self.visits and self.visits[w.pk].rejected
            ]
            if rejected:
                # The host reads the visits without an ORDER BY; id order is insertion order.
                for work_id, reason in (
                    UserVisit.objects.filter(completed_work_id__in=rejected)
                    .exclude(reason__isnull=True)
                    .exclude(reason="")
                    .order_by("completed_work_id", "id")
                    .values_list("completed_work_id", "reason")
                ):
                    self.reasons[work_id].append(reason)

    # -- counting ------------------------------------------------------------------------------

    def _per_unit(self, work_id: int, approved: bool) -> dict[int, int]:
        v = self.visits.get(work_id)
        if v is None:
            return {}
        return v.agreed if approved else v.total

    def _own_count(self, work_id: int, unit: int, approved: bool) -> int:
        return _count(self._per_unit(work_id, approved), self.required[unit], self.optional[unit])

    def _model_count(self, work_id: int, key: tuple, approved: bool, seen: frozenset) -> int:
        """What the host's ``CompletedWork.completed_count`` / ``approved_count`` give: the same
        count, but capped by the works of *all* the unit's child payment units."""
        access_id, entity_id, unit = key
        number = self._own_count(work_id, unit, approved)
        kids = self.children.get(unit)
        if kids:
            total = 0
            for kid in kids:
                child_key = (access_id, entity_id, kid)
                for child_id in self.works_by_key.get(child_key, ()):
                    if child_id not in seen:
                        total += self._model_count(child_id, child_key, approved, seen | {child_id})
            number = min(number, total)
        return number

    def counts(self) -> dict[int, tuple[int, int]]:
        """Per work id, (completed, approved), in the host's order of evaluation.

        The host walks the works in queryset order. A parent's child works that it has not
        counted yet are counted the model's way (all child units) and kept: a child work met
        later in the walk keeps those numbers instead of being counted again.
        """
        counts: dict[int, tuple[int, int]] = {}
        for work in self.works:
            if work.pk in counts:
                continue
            unit = work.payment_unit_id
            completed = self._own_count(work.pk, unit, approved=False)
            approved = self._own_count(work.pk, unit, approved=True)
            kids = self.batch_children.get(unit)
            if kids:
                child_completed = child_approved = 0
                for kid in kids:
                    key = (work.opportunity_access_id, work.entity_id, kid)
                    for child_id in self.works_by_key.get(key, ()):
                        if child_id not in counts:
                            seen = frozenset({child_id})
                            counts[child_id] = (
                                self._model_count(child_id, key, False, seen),
                                self._model_count(child_id, key, True, seen),
                            )
                        child_completed += counts[child_id][0]
                        child_approved += counts[child_id][1]
                completed = min(completed, child_completed)
                approved = min(approved, child_approved)
            counts[work.pk] = (completed, approved)
        return counts

    # -- status and pay ------------------------------------------------------------------------

    def _is_approved(self, work: CompletedWork) -> bool:
        v = self.visits[work.pk]

        def accepted(du: int) -> bool:
            return v.approved.get(du, 0) > 0 and v.agreed.get(du, 0) > 0

        unit = work.payment_unit_id
        if not all(accepted(du) for du in self.required[unit]):
            return False
        optional = self.optional[unit]
        return not optional or any(accepted(du) for du in optional)

    def _pay_per_unit(self, work: CompletedWork) -> tuple[int, int]:
        if CompletedWork.payment_unit.is_cached(work):
            return work.payment_unit.amount, work.payment_unit.org_amount
        _, amount, org_amount = self.units[work.payment_unit_id]
        return amount, org_amount

    def run(self) -> None:
        self.load()
        counts = self.counts()
        rate_of = _RateLookup(self.opportunity)
        auto_approve = self.opportunity.auto_approve_payments
        to_update = []
        for work in self.works:
            if work.pk not in self.visits:
                continue  # no visit: the host leaves the work alone
            completed, approved = counts[work.pk]
            if auto_approve:
                if self.visits[work.pk].rejected:
                    work.status = CompletedWorkStatus.rejected
                    work.reason = "\n".join(self.reasons.get(work.pk, ()))
                elif self._is_approved(work):
                    work.status = CompletedWorkStatus.approved
                elif work.status == CompletedWorkStatus.incomplete:
                    work.status = CompletedWorkStatus.pending
            if completed >= 1:
                pay = usd = org_pay = org_usd = 0
                if approved > 0 and work.status == CompletedWorkStatus.approved:
                    amount, org_amount = self._pay_per_unit(work)
                    pay = approved * amount
                    org_pay = approved * org_amount
                    rate = rate_of(work.status_modified_date)
                    # int / int is a float for USD (rate 1), int / Decimal a Decimal otherwise;
                    # either is rounded to cents by numeric(10, 2) when written.
                    usd = pay / rate
                    org_usd = org_pay / rate
                work.saved_completed_count = completed
                work.saved_approved_count = approved
                work.saved_payment_accrued = pay
                work.saved_payment_accrued_usd = usd
                work.saved_org_payment_accrued = org_pay
                work.saved_org_payment_accrued_usd = org_usd
            elif not auto_approve:
                continue
            to_update.append(work)
        if to_update:
            CompletedWork.objects.bulk_update(to_update, fields=SAVED_FIELDS)


def update_status(
    completed_works: QuerySet, opportunity_access: OpportunityAccess, compute_payment=True
) -> None:
    """Set each work's status, cached counts and pay from its visits; update the access.

    ``completed_works`` must be a ``CompletedWork`` queryset, as in the host (which builds
    sub-queries from it); the works are taken in its order. See the module docstring for the
    rules. Returns nothing.
    """
    if not isinstance(completed_works, QuerySet):
        raise TypeError(
            "update_status needs a CompletedWork queryset (the host calls .values_list on it), "
            f"not {type(completed_works).__name__}"
        )
    works = list(completed_works)
    if works:
        _Recompute(opportunity_access, works).run()
    if compute_payment:
        opportunity_access.payment_accrued = (
            CompletedWork.objects.filter(opportunity_access=opportunity_access).aggregate(
                payment_accrued=Sum("saved_payment_accrued")
            )["payment_accrued"]
            or 0
        )
        opportunity_access.save()
