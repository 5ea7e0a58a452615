"""The row every planner produces and the helpers shared by planners."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

from django.db import connection

from ledger import digests
from ledger.sql import chunks, cursor, table


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
_ENTITY_KIND, _ENTITY_ID = itemgetter(0), itemgetter(1)


def with_expectations(rows: list[PlannedRow]) -> list[PlannedRow]:
    """Fill in the rest of each row's expected state — latest ledger event, a work's visits —
    in place, and return ``rows``.

    Each row is replaced where it stands, so a plan of hundreds of thousands of rows is never
    held twice: the row it replaces is freed as the new one takes its place.
    """
    from ledger.state import latest_events, work_members

    work = "completed_work"
    latest = latest_events((r.entity_kind, r.entity_id) for r in rows)
    members = work_members(r.entity_id for r in rows if r.entity_kind == work).get
    latest_work = latest.by_kind.get(work, {}).get
    latest_visit = latest.by_kind.get("visit", {}).get
    make = PlannedRow._make  # a tuple each: _replace builds a dict per row
    head, tail = _EXPECTED, _EXPECTED + 2  # prev_event_id and members sit between them
    for i, r in enumerate(rows):
        rows[i] = (
            make((*r[:head], latest_work(r[1]), members(r[1]), *r[tail:]))
            if r[0] == work
            else make((*r[:head], latest_visit(r[1]), None, *r[tail:]))
        )
    return rows


def plan_digest(
    rows: Iterable[PlannedRow], presorted: bool = False, fmt: int = digests.CURRENT_FORMAT
) -> str:
    """A digest over every column of the planned rows (:mod:`ledger.digests`), so apply and
    ``verify`` can tell the plan was not altered. Rows are taken in (entity_kind, entity_id)
    order; pass ``presorted`` when they already are.
    """
    if not presorted:
        # Two stable sorts on fields the rows already hold: no key tuple per row.
        rows = sorted(rows, key=_ENTITY_ID)
        rows.sort(key=_ENTITY_KIND)
    return digests.plan_digest(rows, fmt)


def fetch(sql: str, params: dict | list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def stream(sql: str, params: dict | list) -> Iterator[tuple]:
    """The rows of a query a chunk at a time (a server-side cursor, read-only like any
    planner's read): a result of a plan's size is never held as one list."""
    with cursor(chunked=True) as cur:
        cur.execute(sql, params)
        yield from chunks(cur)


__all__ = ["PlannedRow", "fetch", "plan_digest", "stream", "table"]
