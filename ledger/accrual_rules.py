"""The host's accrual rules, projected for a whole batch from one read of the database.

What the recompute after an apply will write — ``update_status`` over every completed work of
each affected access, then ``payment_accrued`` as the sum of their pay — follows from the rows
as they are plus the planned flips. So it can be computed instead of simulated: one SQL
statement reads every work of the affected accesses with its visits counted per deliver unit
*as they will be after the flips*, and applies the rules that need nothing but those counts
(the work's status, its uncapped completed and approved counts, whether it has visits, the
exchange rate of the day its status will carry); the few rules that need the host's walk over
works in order — capping a parent unit's counts by its child units' works — and the money
arithmetic run in Python, on the host's own types. Nothing is written and no row is locked.

The rules, as the host applies them (``CompletedWorkUpdater`` in ``opportunity/utils/
completed_work.py`` at 8f79228b), for each work of the access that has at least one visit:

* per deliver unit of its visits: all of them, and those approved *and* agreed by review;
* completed / approved: the minimum of those counts over the unit's required deliver units
  (0 without any), capped by their total over its optional deliver units when it has some;
  and, when a work of the access has a child unit of the work's unit, capped by the sum over
  the child works of the same access and entity (NULL matches NULL) — a child work counted
  first through its parent takes the model's ``completed_count``/``approved_count``, capped by
  *all* of its unit's child units (see :func:`_walk`);
* with ``auto_approve_payments``: a rejected visit makes the work rejected; else it is
  approved when every required deliver unit has an approved-and-agreed visit and, when the
  unit has optional ones, at least one of those has; else an incomplete work becomes pending.
  A new status is stamped now (the model's ``__setattr__``), which sets the rate's date;
* when completed >= 1: the saved counts, and pay ``approved × amount`` (and ``× org_amount``)
  when approved > 0 and the work is approved, else 0; USD is the pay divided by
  ``get_exchange_rate(currency, status_modified_date)`` — the int 1 for USD (a float), else
  the latest stored rate on or before that date (a Decimal) — stored into ``numeric(10, 2)``;
  with fewer than one completed, the saved figures stay as they are.

The access's accrual is then the sum of ``saved_payment_accrued`` over all of its works.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from itertools import groupby
from typing import NamedTuple

from django.conf import settings
from django.utils import timezone

from ledger.errors import LedgerError
from ledger.host import (
    CompletedWork,
    CompletedWorkStatus,
    Currency,
    DeliverUnit,
    ExchangeRate,
    Opportunity,
    OpportunityAccess,
    PaymentUnit,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from ledger.models import EntityKind
from ledger.planners.held import HeldRows
from ledger.planners.rows import PlannedRow
from ledger.sql import chunks, cursor, int_array, table, text_array

ZERO = Decimal(0)
USD = "USD"
APPROVED = str(CompletedWorkStatus.approved)

# The saved figures of a work: completed, approved, pay, pay USD, org pay, org pay USD.
Figures = tuple[int, int, int, Decimal, int, Decimal]


class WorkAfter(NamedTuple):
    """A work as the host's recompute will leave it."""

    access_id: int
    status: str
    figures: Figures


@dataclass
class AccessSums:
    """An access's saved pay summed over all of its works, now and after the recompute."""

    pay_now: int = 0
    usd_now: Decimal = ZERO
    org_now: int = 0
    org_usd_now: Decimal = ZERO
    pay_after: int = 0
    usd_after: Decimal = ZERO
    org_after: int = 0
    org_usd_after: Decimal = ZERO


@dataclass
class Projection:
    sums: dict[int, AccessSums]
    # Planned works the recompute would not leave with their planned status: id -> status.
    unstable: dict[int, str]
    # Accesses whose result depends on the order the host's unordered query returns works
    # (see :func:`_walk`); projected in id order.
    order_dependent: set[int] = field(default_factory=set)
    # Every work, when asked for (tests compare them with the host's, work by work).
    works: dict[int, WorkAfter] | None = None


_SQL = """
WITH planned_works AS (
    SELECT p.id, (%(statuses)s::text[])[p.k] AS status
    FROM unnest(%(work_ids)s::bigint[], %(work_to)s::int[]) AS p(id, k)
), planned_visits AS (
    SELECT p.id, (%(statuses)s::text[])[p.k] AS status
    FROM unnest(%(visit_ids)s::bigint[], %(visit_to)s::int[]) AS p(id, k)
), restored AS (
    SELECT * FROM unnest(%(restored_ids)s::bigint[], %(restored_stamps)s::timestamptz[])
        AS r(id, stamp)
), works AS (
    -- a flipped work carries the apply's time, or the date an undo restores (NULL included)
    SELECT w.id, w.opportunity_access_id AS access_id, w.payment_unit_id AS unit_id,
           w.entity_id, COALESCE(p.status, w.status) AS status,
           CASE WHEN p.id IS NULL THEN w.status_modified_date
                WHEN r.id IS NOT NULL THEN r.stamp
                ELSE %(now)s END AS modified,
           w.saved_completed_count, w.saved_approved_count, w.saved_payment_accrued,
           w.saved_payment_accrued_usd, w.saved_org_payment_accrued,
           w.saved_org_payment_accrued_usd
    FROM {work} w
    LEFT JOIN planned_works p ON p.id = w.id
    LEFT JOIN restored r ON r.id = w.id
    WHERE w.opportunity_access_id = ANY(%(accesses)s::bigint[])
), per_unit AS (
    -- each work's visits per deliver unit, with the planned visit statuses
    SELECT v.completed_work_id AS work_id, v.deliver_unit_id AS du,
           count(*) AS total,
           count(*) FILTER (WHERE s.status = %(approved)s
                              AND v.review_status = %(agree)s) AS agreed,
           count(*) FILTER (WHERE s.status = %(rejected)s) AS rejected
    FROM {visit} v
    LEFT JOIN planned_visits p ON p.id = v.id
    CROSS JOIN LATERAL (SELECT COALESCE(p.status, v.status) AS status) s
    WHERE v.completed_work_id IN (SELECT id FROM works)
    GROUP BY 1, 2
), per_work AS (
    SELECT work_id, sum(total) AS visits, sum(rejected) AS rejected
    FROM per_unit GROUP BY work_id
), rules AS (
    -- over the deliver units of the work's payment unit; a unit without any has no row here
    SELECT w.id,
           min(COALESCE(c.total, 0)) FILTER (WHERE NOT d.optional) AS required_total,
           min(COALESCE(c.agreed, 0)) FILTER (WHERE NOT d.optional) AS required_agreed,
           sum(COALESCE(c.total, 0)) FILTER (WHERE d.optional) AS optional_total,
           sum(COALESCE(c.agreed, 0)) FILTER (WHERE d.optional) AS optional_agreed,
           bool_and(COALESCE(c.agreed, 0) > 0) FILTER (WHERE NOT d.optional) AS required_ok,
           bool_or(COALESCE(c.agreed, 0) > 0) FILTER (WHERE d.optional) AS optional_ok
    FROM works w
    JOIN {deliver_unit} d ON d.payment_unit_id = w.unit_id
    LEFT JOIN per_unit c ON c.work_id = w.id AND c.du = d.id
    GROUP BY w.id
), decided AS (
    SELECT w.*, pw.visits IS NOT NULL AS has_visits,
           (CASE WHEN r.optional_total IS NULL THEN COALESCE(r.required_total, 0)
                 ELSE LEAST(COALESCE(r.required_total, 0), r.optional_total)
            END)::bigint AS completed,
           (CASE WHEN r.optional_agreed IS NULL THEN COALESCE(r.required_agreed, 0)
                 ELSE LEAST(COALESCE(r.required_agreed, 0), r.optional_agreed)
            END)::bigint AS approved,
           CASE WHEN NOT o.auto_approve_payments OR pw.visits IS NULL THEN w.status
                WHEN pw.rejected > 0 THEN %(rejected)s
                WHEN COALESCE(r.required_ok, TRUE) AND COALESCE(r.optional_ok, TRUE)
                     THEN %(approved)s
                WHEN w.status = %(incomplete)s THEN %(pending)s
                ELSE w.status END AS final_status,
           cur.code, u.amount, u.org_amount
    FROM works w
    JOIN {payment_unit} u ON u.id = w.unit_id
    JOIN {access} a ON a.id = w.access_id
    JOIN {opportunity} o ON o.id = a.opportunity_id
    LEFT JOIN {currency} cur ON cur.code = o.currency_id
    LEFT JOIN per_work pw ON pw.work_id = w.id
    LEFT JOIN rules r ON r.id = w.id
), dated AS (
    -- the date get_exchange_rate is asked for: the stamp's day (a new status is stamped now)
    SELECT d.*,
           CASE WHEN d.final_status <> d.status THEN %(today)s::date
                WHEN d.modified IS NULL THEN %(utc_today)s::date
                ELSE (d.modified AT TIME ZONE %(tz)s)::date END AS rate_day
    FROM decided d
), wanted AS (
    SELECT DISTINCT upper(code) AS code, rate_day FROM dated
    WHERE has_visits AND final_status = %(approved)s AND approved > 0
      AND code IS NOT NULL AND upper(code) <> %(usd)s
), rates AS (
    SELECT w.code, w.rate_day, r.rate
    FROM wanted w
    LEFT JOIN LATERAL (
        SELECT x.rate FROM {rate} x
        WHERE x.currency_code = w.code AND x.rate_date <= w.rate_day
        ORDER BY x.rate_date DESC LIMIT 1
    ) r ON TRUE
)
SELECT d.id, d.access_id, d.unit_id, d.entity_id, d.status, d.final_status, d.has_visits,
       d.completed, d.approved, d.amount, d.org_amount, d.code, d.rate_day, r.rate,
       d.saved_completed_count, d.saved_approved_count, d.saved_payment_accrued,
       d.saved_payment_accrued_usd, d.saved_org_payment_accrued,
       d.saved_org_payment_accrued_usd
FROM dated d
LEFT JOIN rates r ON r.code = upper(d.code) AND r.rate_day = d.rate_day
ORDER BY d.access_id, d.id
"""


def _sql() -> str:
    return _SQL.format(
        work=table(CompletedWork),
        visit=table(UserVisit),
        deliver_unit=table(DeliverUnit),
        payment_unit=table(PaymentUnit),
        access=table(OpportunityAccess),
        opportunity=table(Opportunity),
        currency=table(Currency),
        rate=table(ExchangeRate),
    )


class _Row(NamedTuple):
    id: int
    access_id: int
    unit_id: int
    entity_id: str | None
    status: str  # after the planned flips
    final_status: str  # after the recompute's status rules
    has_visits: bool
    completed: int  # before child units cap it
    approved: int
    amount: int
    org_amount: int
    code: str | None
    rate_day: datetime.date
    rate: Decimal | None  # None: not looked up (not needed, or USD) or none stored
    saved_completed: int
    saved_approved: int
    saved_pay: int
    saved_usd: Decimal
    saved_org: int
    saved_org_usd: Decimal


# -- child payment units ------------------------------------------------------------------------


def _child_units(unit_ids: Iterable[int]) -> dict[int, list[int]]:
    """Every payment unit's child units (all of them, as ``child_payment_units.all()``)."""
    ids = sorted(set(unit_ids))
    found: dict[int, list[int]] = defaultdict(list)
    if not ids:
        return found
    with cursor() as cur:
        cur.execute(
            f"""SELECT parent_payment_unit_id, id FROM {table(PaymentUnit)}
                WHERE parent_payment_unit_id = ANY(%s::bigint[]) ORDER BY id""",
            [int_array(ids)],
        )
        for parent, child in cur.fetchall():
            found[parent].append(child)
    return found


def _walk(works: list[_Row], children: dict[int, list[int]]) -> tuple[dict[int, tuple], bool]:
    """(completed, approved) per work of one access by the host's walk, and whether the result
    depends on the order of the walk.

    The host walks the works in the order of its (unordered) query; this walks them in id order.
    A work whose unit has child units *among the access's works* is capped by the sum over the
    child works of the same entity; a child work not counted yet is counted then by the model's
    properties, which cap it by *all* of its unit's child units — so a child unit without any
    work in the access caps it to 0 there, and not when the walk meets the work first. Only then
    does the order matter.
    """
    base = {w.id: (w.completed, w.approved) for w in works}
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for w in works:
        by_key[(w.entity_id, w.unit_id)].append(w.id)
    unit_of = {w.id: w.unit_id for w in works}
    entity_of = {w.id: w.entity_id for w in works}
    present = {w.unit_id for w in works}
    in_access = {u: [k for k in kids if k in present] for u, kids in children.items()}

    def model(work_id: int, depth: int = 0) -> tuple[int, int]:
        if depth > 100:
            raise LedgerError(
                f"payment unit {unit_of[work_id]} is its own ancestor: the host's recompute "
                "would never end"
            )
        completed, approved = base[work_id]
        kids = children.get(unit_of[work_id])
        if kids:
            child_completed = child_approved = 0
            for kid in kids:
                for child in by_key.get((entity_of[work_id], kid), ()):
                    c, a = model(child, depth + 1)
                    child_completed += c
                    child_approved += a
            completed, approved = min(completed, child_completed), min(approved, child_approved)
        return completed, approved

    counts: dict[int, tuple[int, int]] = {}
    for w in works:
        if w.id in counts:
            continue
        completed, approved = base[w.id]
        kids = in_access.get(w.unit_id)
        if kids:
            child_completed = child_approved = 0
            for kid in kids:
                for child in by_key.get((w.entity_id, kid), ()):
                    if child not in counts:
                        counts[child] = model(child)
                    child_completed += counts[child][0]
                    child_approved += counts[child][1]
            completed, approved = min(completed, child_completed), min(approved, child_approved)
        counts[w.id] = (completed, approved)

    # Order matters where a work of a unit with child units, none of them worked in this
    # access, has completed something and has a parent work: the model counts it 0.
    parent_of = {kid: parent for parent, kids in children.items() for kid in kids}
    dependent = any(
        children.get(w.unit_id)
        and not in_access.get(w.unit_id)
        and w.completed > 0
        and by_key.get((w.entity_id, parent_of.get(w.unit_id)))
        for w in works
    )
    return counts, dependent


# -- money --------------------------------------------------------------------------------------

_USD_FIELD = CompletedWork._meta.get_field("saved_payment_accrued_usd")
_CENT = Decimal(1).scaleb(-_USD_FIELD.decimal_places)
_USD_LIMIT = Decimal(10) ** (_USD_FIELD.max_digits - _USD_FIELD.decimal_places)


def stored_usd(value: float | Decimal) -> Decimal:
    """What ``numeric(10, 2)`` holds once the host's quotient is saved.

    Django turns a float (``pay / 1`` for USD) into a Decimal at the field's ``max_digits``
    precision and passes a Decimal through; PostgreSQL rounds to the column's scale, half away
    from zero, and refuses what does not fit.
    """
    exact = _USD_FIELD.to_python(value)
    rounded = exact.quantize(_CENT, rounding=ROUND_HALF_UP)
    if abs(rounded) >= _USD_LIMIT:
        raise LedgerError(
            f"a USD figure of {rounded} does not fit the host's saved USD column: the host's "
            "recompute would fail"
        )
    return rounded


class _Rates:
    """``get_exchange_rate`` for each work that needs one, or what would stop the host."""

    def __init__(self) -> None:
        self.missing: set[tuple[str, datetime.date]] = set()
        self.zero: set[tuple[str, datetime.date]] = set()
        self.no_currency = False

    def __call__(self, row: _Row) -> int | Decimal | None:
        if row.code is None:
            self.no_currency = True
            return None
        code = row.code.upper()
        if code == USD:
            return 1
        if row.rate is None:
            self.missing.add((code, row.rate_day))
            return None
        if not row.rate:
            self.zero.add((code, row.rate_day))
            return None
        return row.rate

    def refuse(self) -> None:
        if self.missing:
            shown = ", ".join(f"{c} on or before {d}" for c, d in sorted(self.missing)[:10])
            raise LedgerError(
                f"no stored exchange rate for {shown}: pricing approved work would make the "
                "host fetch one from its external rates service; store the rate first"
            )
        if self.zero:
            shown = ", ".join(f"{c} on {d}" for c, d in sorted(self.zero)[:10])
            raise LedgerError(f"the stored exchange rate is 0 for {shown}: the host would fail")
        if self.no_currency:
            raise LedgerError(
                "an opportunity without a currency has approved work to price: the host would fail"
            )


def _after(row: _Row, completed: int, approved: int, rate_of: _Rates) -> WorkAfter:
    saved: Figures = (
        row.saved_completed, row.saved_approved, row.saved_pay, row.saved_usd, row.saved_org,
        row.saved_org_usd,
    )  # fmt: skip
    if not row.has_visits:
        return WorkAfter(row.access_id, row.status, saved)
    status = row.final_status
    if completed < 1:
        return WorkAfter(row.access_id, status, saved)
    pay = org = 0
    usd = org_usd = ZERO
    if approved > 0 and status == APPROVED:
        pay = approved * row.amount
        org = approved * row.org_amount
        rate = rate_of(row)
        if rate is not None:
            usd = stored_usd(pay / rate)
            org_usd = stored_usd(org / rate)
    return WorkAfter(row.access_id, status, (completed, approved, pay, usd, org, org_usd))


# -- the projection -----------------------------------------------------------------------------


def _flip_arrays(
    flips: Iterable[PlannedRow], stamps: Mapping[tuple[str, int], object]
) -> dict[str, str]:
    """The flips as arrays: ids, and each one's target as a position in ``statuses`` (a
    handful of values; one small integer per row is much cheaper to send than text); and the
    works whose flip restores a date of its own (an undo), with that date."""
    work_kind = EntityKind.completed_work.value
    works: dict[int, str] = {}
    visits: dict[int, str] = {}
    for r in flips:
        (works if r.entity_kind == work_kind else visits)[r.entity_id] = r.to_status
    statuses = sorted(set(works.values()) | set(visits.values()))
    position = {status: n for n, status in enumerate(statuses, start=1)}
    restored = {pk: stamps[(work_kind, pk)] for pk in works if (work_kind, pk) in stamps}
    return {
        "statuses": text_array(statuses),
        "work_ids": int_array(works),
        "work_to": int_array(position[s] for s in works.values()),
        "visit_ids": int_array(visits),
        "visit_to": int_array(position[s] for s in visits.values()),
        "restored_ids": int_array(restored),
        "restored_stamps": text_array(restored.values()),
    }


def _rows(params: dict) -> Iterator[_Row]:
    with cursor(chunked=True) as cur:
        cur.execute(_sql(), params)
        for values in chunks(cur):
            yield _Row(*values)


def project(
    flips: list[PlannedRow] | HeldRows,
    access_ids: Iterable[int],
    *,
    now: datetime.datetime,
    stamps: Mapping[tuple[str, int], object] | None = None,
    keep_works: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Projection:
    """The host's recompute of ``access_ids`` after ``flips`` are applied at ``now``.

    ``flips`` are the rows that will be flipped (none excluded), or rows the database holds
    (:class:`~ledger.planners.held.HeldRows`, their own dates with them); ``stamps`` the
    ``status_modified_date`` an undo restores, by (entity kind, id). Reads only; call it inside
    a read-only repeatable-read transaction so every read sees the same snapshot.
    """
    access_ids = sorted(set(access_ids))
    held = isinstance(flips, HeldRows)
    tz = timezone.get_default_timezone_name() if settings.USE_TZ else "UTC"
    params = {
        **(flips.flip_arrays() if held else _flip_arrays(flips, stamps or {})),
        "accesses": int_array(access_ids),
        "now": now,
        "today": timezone.localdate(now) if settings.USE_TZ else now.date(),
        # get_exchange_rate's own default day: now().date(), taken in UTC
        "utc_today": now.astimezone(datetime.UTC).date(),
        "tz": tz,
        "approved": APPROVED,
        "agree": str(VisitReviewStatus.agree),
        "rejected": str(VisitValidationStatus.rejected),
        "incomplete": str(CompletedWorkStatus.incomplete),
        "pending": str(CompletedWorkStatus.pending),
        "usd": USD,
    }
    planned = (
        flips.planned_works()
        if held
        else {r.entity_id: r.to_status for r in flips if r.entity_kind == "completed_work"}
    )
    sums = {pk: AccessSums() for pk in access_ids}
    final: dict[int, str] = {}
    works: dict[int, WorkAfter] | None = {} if keep_works else None
    order_dependent: set[int] = set()
    rate_of = _Rates()
    walked: list[list[_Row]] = []  # accesses with works of units that have child units

    def settle(access_works: list[_Row], counts: dict[int, tuple] | None) -> None:
        s = sums[access_works[0].access_id]
        for row in access_works:
            if counts is None:
                completed, approved = row.completed, row.approved
            else:
                completed, approved = counts[row.id]
            after = _after(row, completed, approved, rate_of)
            s.pay_now += row.saved_pay
            s.usd_now += row.saved_usd
            s.org_now += row.saved_org
            s.org_usd_now += row.saved_org_usd
            _, _, pay, usd, org, org_usd = after.figures
            s.pay_after += pay
            s.usd_after += usd
            s.org_after += org
            s.org_usd_after += org_usd
            if row.id in planned:
                final[row.id] = after.status
            if works is not None:
                works[row.id] = after

    parents = _parent_units()  # units with child units; works of the others need no walk
    seen = 0
    for _, group in groupby(_rows(params), key=lambda r: r.access_id):
        access_works = list(group)
        if any(w.unit_id in parents for w in access_works):
            walked.append(access_works)
        else:
            settle(access_works, None)
        seen += 1
        if progress and seen % 1000 == 0:
            progress(f"projected {seen}/{len(access_ids)} accesses")
    if walked:
        children = _child_units(w.unit_id for ws in walked for w in ws)
        for access_works in walked:
            counts, dependent = _walk(access_works, children)
            if dependent:
                order_dependent.add(access_works[0].access_id)
            settle(access_works, counts)
    rate_of.refuse()
    unstable = {pk: final.get(pk, "(gone)") for pk, to in planned.items() if final.get(pk) != to}
    return Projection(sums, unstable, order_dependent, works)


def _parent_units() -> set[int]:
    """Payment units that are some unit's parent (few: most opportunities have no tree)."""
    with cursor() as cur:
        cur.execute(
            f"""SELECT DISTINCT parent_payment_unit_id FROM {table(PaymentUnit)}
                WHERE parent_payment_unit_id IS NOT NULL"""
        )
        return {pk for (pk,) in cur.fetchall()}
