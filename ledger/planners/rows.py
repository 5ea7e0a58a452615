"""The row every planner produces and the helpers shared by planners."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from django.db import connection

from ledger import digests
from ledger.sql import table


class PlannedRow(NamedTuple):
    entity_kind: str  # "visit" | "completed_work"
    entity_id: int
    completed_work_id: int | None  # the unit a visit is flipped with (itself for a work)
    opportunity_id: int
    access_id: int | None
    xform_id: str | None
    from_status: str
    to_status: str
    excluded: str  # "" when the row will be flipped, else an ExclusionReason value
    suspended: bool
    prev_event_id: int | None = None  # the entity's latest ledger event when planned
    members: str | None = None  # a work's visits when planned ("id:status,…")
    # The unit's work when planned: paid (``payment_date`` set) and invoiced. Apply re-checks
    # both under its locks (ledger.assumptions): a work paid during review is not what was
    # priced and approved.
    paid: bool = False
    invoiced: bool = False


# Positions of the fields that take a handful of values (see ledger.sql.shared_strings).
FEW_VALUED = tuple(
    PlannedRow._fields.index(name)
    for name in ("entity_kind", "from_status", "to_status", "excluded")
)


_EXPECTED = PlannedRow._fields.index("prev_event_id")


def with_expectations(rows: list[PlannedRow]) -> list[PlannedRow]:
    """The rows with the rest of their expected state: latest ledger event, a work's visits."""
    from ledger.state import latest_events, work_members

    work = "completed_work"
    latest = latest_events((r.entity_kind, r.entity_id) for r in rows)
    members = work_members(r.entity_id for r in rows if r.entity_kind == work)
    latest_work = latest.by_kind.get(work, {}).get
    latest_visit = latest.by_kind.get("visit", {}).get
    make = PlannedRow._make  # a tuple each: _replace builds a dict per row
    head, tail = _EXPECTED, _EXPECTED + 2  # prev_event_id and members sit between them
    return [
        make((*r[:head], latest_work(r[1]), members.get(r[1]), *r[tail:]))
        if r[0] == work
        else make((*r[:head], latest_visit(r[1]), None, *r[tail:]))
        for r in rows
    ]


def plan_digest(
    rows: Iterable[PlannedRow], presorted: bool = False, fmt: int = digests.CURRENT_FORMAT
) -> str:
    """A digest over every column of the planned rows (:mod:`ledger.digests`), so apply and
    ``verify`` can tell the plan was not altered. Rows are taken in (entity_kind, entity_id)
    order; pass ``presorted`` when they already are.
    """
    if not presorted:
        rows = sorted(rows, key=lambda r: (r.entity_kind, r.entity_id))
    return digests.plan_digest(rows, fmt)


def fetch(sql: str, params: dict | list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


__all__ = ["PlannedRow", "fetch", "plan_digest", "table"]
