"""The over-cap rule of the incident.

For each claim limit in scope, the access's completed works of that payment unit that are not
over_limit are ranked by (``date_created``, ``id``) — old rows share one ``date_created``, so
the id breaks ties — and those ranked past ``max_visits`` are over the cap. Completed works are
counted, not visits: a payment unit with a registration and a service form has two visits per
earned unit. Each over-cap work is flipped to over_limit together with all its visits that are
not already over_limit, trial or rejected.

Works already paid or invoiced, rejected works and works on the operator's exclusion list are
listed with a reason and left alone (paid ones can be opted in); suspended accesses are flagged,
and skipped only on request. The whole scope is one SQL statement.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from ledger.host import (
    CompletedWork,
    CompletedWorkStatus,
    Opportunity,
    OpportunityAccess,
    OpportunityClaim,
    OpportunityClaimLimit,
    UserVisit,
    VisitValidationStatus,
)
from ledger.models import EntityKind, ExclusionReason
from ledger.planners.rows import PlannedRow, fetch, table
from ledger.sql import int_array

OVER_LIMIT = VisitValidationStatus.over_limit.value
VISIT_SKIP = (
    VisitValidationStatus.over_limit.value,
    VisitValidationStatus.trial.value,
    VisitValidationStatus.rejected.value,
)


@dataclass(frozen=True)
class OverCapOptions:
    opportunity_ids: list[int] | None  # None: every opportunity (scan reports only)
    exclude_work_ids: Collection[int] = field(default_factory=frozenset)
    include_paid: bool = False
    skip_suspended: bool = False


def _sql(scoped: bool) -> str:
    scope = "WHERE a.opportunity_id = ANY(%(opportunities)s)" if scoped else ""
    return f"""
    WITH limits AS (
        SELECT c.opportunity_access_id AS access_id, cl.payment_unit_id, cl.max_visits,
               a.opportunity_id, a.suspended
        FROM {table(OpportunityClaimLimit)} cl
        JOIN {table(OpportunityClaim)} c ON c.id = cl.opportunity_claim_id
        JOIN {table(OpportunityAccess)} a ON a.id = c.opportunity_access_id
        {scope}
    ),
    ranked AS (
        SELECT w.id, w.status, w.payment_date, w.invoice_id, l.access_id, l.opportunity_id,
               l.suspended, l.max_visits,
               row_number() OVER (
                   PARTITION BY w.opportunity_access_id, w.payment_unit_id
                   ORDER BY w.date_created, w.id
               ) AS position
        FROM {table(CompletedWork)} w
        JOIN limits l
          ON l.access_id = w.opportunity_access_id AND l.payment_unit_id = w.payment_unit_id
        WHERE w.status <> %(over_limit)s
    ),
    over_cap AS (
        SELECT * FROM ranked WHERE position > max_visits
    )
    SELECT 'completed_work', o.id, o.id, o.opportunity_id, o.access_id, NULL::text, o.status,
           o.payment_date IS NOT NULL, o.invoice_id IS NOT NULL, o.suspended
    FROM over_cap o
    UNION ALL
    SELECT 'visit', v.id, o.id, o.opportunity_id, o.access_id, v.xform_id, v.status,
           o.payment_date IS NOT NULL, o.invoice_id IS NOT NULL, o.suspended
    FROM over_cap o
    JOIN {table(UserVisit)} v ON v.completed_work_id = o.id
    WHERE v.status <> ALL(%(visit_skip)s)
    ORDER BY 3, 1, 2
    """


def _exclusion(
    work_status: str, paid: bool, invoiced: bool, work_id: int, suspended: bool, opts
) -> str:
    if work_id in opts.exclude_work_ids:
        return ExclusionReason.operator.value
    if work_status == CompletedWorkStatus.rejected:
        return ExclusionReason.rejected.value
    if not opts.include_paid:
        if paid:
            return ExclusionReason.paid.value
        if invoiced:
            return ExclusionReason.invoiced.value
    if suspended and opts.skip_suspended:
        return ExclusionReason.suspended.value
    return ""


def plan_over_cap(opts: OverCapOptions) -> list[PlannedRow]:
    """Every over-cap completed work in scope and its visits, with exclusions marked."""
    params = {
        "opportunities": opts.opportunity_ids or [],
        "over_limit": OVER_LIMIT,
        "visit_skip": list(VISIT_SKIP),
    }
    rows: list[PlannedRow] = []
    work_status: dict[int, str] = {}
    for (
        kind,
        entity_id,
        work_id,
        opp_id,
        access_id,
        xform_id,
        status,
        paid,
        invoiced,
        susp,
    ) in fetch(_sql(opts.opportunity_ids is not None), params):
        if kind == EntityKind.completed_work:
            work_status[work_id] = status
        excluded = _exclusion(work_status[work_id], paid, invoiced, work_id, susp, opts)
        rows.append(
            PlannedRow(
                kind, entity_id, work_id, opp_id, access_id, xform_id, status, OVER_LIMIT,
                excluded, susp, paid=paid, invoiced=invoiced,
            )
        )  # fmt: skip
    return rows


_PARTS = """
    parts AS (
        SELECT DISTINCT opportunity_access_id AS access_id, payment_unit_id
        FROM {works} WHERE id = ANY(%(works)s::bigint[])
    ),
    limits AS (
        SELECT cl.id, c.opportunity_access_id AS access_id, cl.payment_unit_id, cl.max_visits
        FROM {limits} cl
        JOIN {claims} c ON c.id = cl.opportunity_claim_id
        JOIN parts p
          ON p.access_id = c.opportunity_access_id AND p.payment_unit_id = cl.payment_unit_id
    )"""


def _parts_sql() -> str:
    return _PARTS.format(
        works=table(CompletedWork),
        limits=table(OpportunityClaimLimit),
        claims=table(OpportunityClaim),
    )


def rank_context(
    work_ids: list[int],
) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """What the rank of these (planned) works depends on, each row with its (access, payment
    unit): the planned works themselves; the other works of the same worker and payment unit
    ranked before the last planned one and not over_limit — one of them set over_limit, or
    gone, would move a planned work back within the cap (a change to a work ranked after, or
    an over_limit work set back, can only move planned works further past it); and the claim
    limits that cap them."""
    works = table(CompletedWork)
    rows = fetch(
        f"""WITH {_parts_sql()},
            planned AS (
                SELECT id, opportunity_access_id AS access_id, payment_unit_id, date_created
                FROM {works} WHERE id = ANY(%(works)s::bigint[])
            ),
            last AS (
                SELECT DISTINCT ON (access_id, payment_unit_id)
                       access_id, payment_unit_id, date_created, id
                FROM planned ORDER BY access_id, payment_unit_id, date_created DESC, id DESC
            )
            SELECT 'planned', id, access_id, payment_unit_id FROM planned
            UNION ALL
            SELECT 'before', w.id, w.opportunity_access_id, w.payment_unit_id
            FROM {works} w
            JOIN last l
              ON l.access_id = w.opportunity_access_id AND l.payment_unit_id = w.payment_unit_id
            WHERE w.status <> %(over_limit)s AND (w.date_created, w.id) < (l.date_created, l.id)
              AND w.id <> ALL(%(works)s::bigint[])
            UNION ALL
            SELECT 'limit', id, access_id, payment_unit_id FROM limits""",
        {"works": int_array(work_ids), "over_limit": OVER_LIMIT},
    )
    found: dict[str, dict[int, tuple[int, int]]] = {"planned": {}, "before": {}, "limit": {}}
    for kind, pk, access, unit in rows:
        found[kind][pk] = (access, unit)
    return found["planned"], found["before"], found["limit"]


def ranks(work_ids: list[int]) -> dict[int, tuple[int | None, int | None]]:
    """Each work's position among its worker's works of its payment unit that are not
    over_limit, ordered as the rule orders them (None: over_limit itself), and the cap of that
    payment unit (None: no claim limit). A work is past the cap when position > cap."""
    rows = fetch(
        f"""WITH {_parts_sql()},
            ranked AS (
                SELECT w.id, row_number() OVER (
                           PARTITION BY w.opportunity_access_id, w.payment_unit_id
                           ORDER BY w.date_created, w.id) AS position
                FROM {table(CompletedWork)} w
                JOIN parts p
                  ON p.access_id = w.opportunity_access_id
                 AND p.payment_unit_id = w.payment_unit_id
                WHERE w.status <> %(over_limit)s
            )
            SELECT w.id, r.position, l.max_visits
            FROM {table(CompletedWork)} w
            LEFT JOIN ranked r ON r.id = w.id
            LEFT JOIN limits l
              ON l.access_id = w.opportunity_access_id AND l.payment_unit_id = w.payment_unit_id
            WHERE w.id = ANY(%(works)s::bigint[])""",
        {"works": int_array(work_ids), "over_limit": OVER_LIMIT},
    )
    return {pk: (position, cap) for pk, position, cap in rows}


def resolve_opportunities(uuids: Collection[str]) -> dict[str, int]:
    """Map opportunity UUIDs to ids; unknown ones are named in the error by the caller."""
    found = Opportunity.objects.filter(opportunity_id__in=list(uuids)).values_list(
        "opportunity_id", "id"
    )
    return {str(uuid): pk for uuid, pk in found}
