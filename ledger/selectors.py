"""Read-only queries for auditors: history, point-in-time status, batches.

Nothing here writes. Every lookup goes through an index of ``ledger_correctionevent``:

============================  ==========================================
history by                    index
============================  ==========================================
visit id                      ``(entity_kind, entity_id, id)``
xform id                      ``(xform_id)`` (+ the visit ids it names)
completed work id             ``(completed_work_id, id)`` and the entity index
access id                     ``(access_id, id)``
opportunity                   ``(opportunity_id, id)``
batch                         ``(batch_id, id)``
============================  ==========================================

Undo lineage comes from the unique indexes behind the one-to-one ``inverts`` (event) and
``reverts`` (batch) columns. Large results are streamed from a server-side cursor.

Point in time (``as_of``) is reconstructed from the events alone — they are the ledger's only
knowledge of the past: an entity's status at *t* is the ``to_status`` of its last event (in id
order) recorded at or before *t*; when its first event was recorded after *t*, its status then
was that first event's ``from_status``. Host rows are consulted only to tell an unknown id from
one that simply was never corrected.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
from django.db import connection
from django.db.models import Count, Q

from ledger.errors import LedgerError, NotFound
from ledger.host import CompletedWork, Opportunity, OpportunityAccess, UserVisit
from ledger.models import (
    AccrualRecompute,
    CorrectionBatch,
    CorrectionEvent,
    EntityKind,
    PlannedChange,
)
from ledger.sql import chunks, int_array, table
from ledger.sql import cursor as sql_cursor

CHUNK_SIZE = 2000

SELECTOR_KINDS = ("visit", "xform_id", "completed_work", "access", "opportunity", "batch")


# --------------------------------------------------------------------------------------------
# Structs
# --------------------------------------------------------------------------------------------


class HistoryEvent(msgspec.Struct, kw_only=True):
    """One event with its batch, operators and undo lineage."""

    id: int
    recorded_at: datetime.datetime
    batch: str
    planner: str
    batch_state: str
    ticket: str
    planned_by: str
    applied_by: str
    entity_kind: str
    entity_id: int
    completed_work_id: int | None
    opportunity_id: int
    access_id: int | None
    xform_id: str | None
    from_status: str
    to_status: str
    reason: str
    prior_status_modified_date: datetime.datetime | None
    new_status_modified_date: datetime.datetime | None
    inverts: int | None
    """The event this (undo) event reverses."""
    inverted_by: int | None
    """The later event that reversed this one."""
    inverted_in_batch: str | None
    """The undo batch holding ``inverted_by``."""
    batch_reverts: str | None
    """When this event's batch is an undo: the batch it reverts."""
    batch_reverted_by: str | None
    """The undo batch that reverted this event's batch, if any."""
    prev_hash: str
    hash: str


class EntityStatus(msgspec.Struct, kw_only=True):
    """An entity's status at ``as_of``, reconstructed from its events."""

    entity_kind: str
    entity_id: int
    status: str
    basis: str
    """``event``: the ``to_status`` of ``event_id``, the last event recorded at or before
    ``as_of``; ``before_first_event``: the ``from_status`` of ``event_id``, the entity's first
    event, recorded after ``as_of``."""
    event_id: int
    event_recorded_at: datetime.datetime
    events_until_then: int
    """Events of this entity recorded at or before ``as_of``."""


class Selector(msgspec.Struct, kw_only=True):
    kind: str
    value: str
    resolved_id: int | None = None
    """The integer id stored on events (opportunity UUIDs resolve to the host's pk)."""


class HistoryReport(msgspec.Struct, kw_only=True):
    """``corrections history --json``: ``events`` without ``--as-of``, ``statuses`` with it."""

    selector: Selector
    as_of: datetime.datetime | None = None
    events: list[HistoryEvent] | None = None
    statuses: list[EntityStatus] | None = None


class BatchRow(msgspec.Struct, kw_only=True):
    """One batch as ``corrections batches`` lists it."""

    id: str
    planner: str
    state: str
    reason: str
    ticket: str
    planned_by: str
    applied_by: str
    created_at: datetime.datetime
    applied_at: datetime.datetime | None
    undone_at: datetime.datetime | None
    discarded_at: datetime.datetime | None
    reverts: str | None
    reverted_by: str | None
    reverted_by_state: str | None
    events: int
    visits: int
    works: int
    accesses: int
    recomputes_done: int
    recomputes_pending: int
    # Of the pending ones: in the Celery workers' queue; last attempt busy; last attempt failed.
    recomputes_queued: int = 0
    recomputes_busy: int = 0
    recomputes_failed: int = 0
    skipped_conflicts: int


class BatchList(msgspec.Struct, kw_only=True):
    batches: list[BatchRow]
    limit: int
    more: bool


class RecomputeRow(msgspec.Struct, kw_only=True):
    access_id: int
    opportunity_id: int
    state: str
    accrual_before: int
    projected_after: int | None
    accrual_after: int | None
    created_at: datetime.datetime
    done_at: datetime.datetime | None
    attempts: int = 0  # attempts that did not finish it
    last_problem: str = ""  # "busy", "failed" or ""
    last_error: str = ""
    last_tried_at: datetime.datetime | None = None
    queued_at: datetime.datetime | None = None  # in the Celery workers' queue since


class ExcludedCount(msgspec.Struct, kw_only=True):
    reason: str
    works: int
    visits: int


class PlannedCounts(msgspec.Struct, kw_only=True):
    """What the plan flips, and what it deliberately left alone, by exclusion reason."""

    visits: int
    works: int
    excluded: list[ExcludedCount]


class BatchDetail(msgspec.Struct, kw_only=True):
    """``corrections show --batch ID``."""

    batch: BatchRow
    scope: dict
    summary: dict
    plan_digest: str
    planned: PlannedCounts
    skipped_conflicts: list
    recomputes: list[RecomputeRow]
    first_event_id: int | None
    last_event_id: int | None
    first_prev_hash: str | None
    last_hash: str | None


# --------------------------------------------------------------------------------------------
# Parsing helpers shared with the command line
# --------------------------------------------------------------------------------------------


def parse_time(value: str, option: str = "--as-of") -> datetime.datetime:
    """An ISO-8601 time; a naive one (or a bare date, meaning 00:00) is read as UTC."""
    text = value.strip()
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise LedgerError(
            f"{option}: {value!r} is not an ISO-8601 time (e.g. 2026-05-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def parse_batch_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise NotFound(f"no batch {value!r}: a batch id is a UUID") from None


def get_batch(value: str) -> CorrectionBatch:
    batch_id = parse_batch_id(value)
    batch = CorrectionBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        raise NotFound(f"no batch {value}")
    return batch


def _parse_int(value: str, what: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise NotFound(f"no {what} {value!r}: expected an integer id") from None
    if number <= 0 or number > 2**63 - 1:
        raise NotFound(f"no {what} {value}")
    return number


def resolve_opportunity(value: str) -> int:
    """An opportunity UUID (``Opportunity.opportunity_id``) — or its integer pk — to the pk."""
    text = str(value).strip()
    if text.isdigit():
        pk = _parse_int(text, "opportunity")
        if (
            Opportunity.objects.filter(pk=pk).exists()
            or CorrectionEvent.objects.filter(opportunity_id=pk).exists()
        ):
            return pk
        raise NotFound(f"no opportunity {value}")
    try:
        key = uuid.UUID(text)
    except ValueError:
        raise NotFound(f"no opportunity {value!r}: expected its UUID") from None
    pk = Opportunity.objects.filter(opportunity_id=key).values_list("pk", flat=True).first()
    if pk is None:
        raise NotFound(f"no opportunity {value}")
    return pk


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A history selection: as an ORM filter on events, and as the same condition in SQL over
    events aliased ``e`` (the history read is plain SQL: an auditor's lookup is a handful of
    rows, and building the ORM query costs more than running it)."""

    selector: Selector
    filter: Q
    where: str
    params: tuple
    # When the selection finds no event: whether the host knows the id (None: not checked).
    known: Callable[[], bool] | None = None


def resolve(kind: str, value: str, *, check: bool = True) -> Resolved:
    """Turn ``--visit 12`` and friends into an index-backed filter on events.

    Raises :class:`NotFound` when the id is unknown to both the ledger and the host. Without
    ``check`` that is left to the caller (:meth:`Resolved.known`, once no event was found), so
    a lookup that finds events costs one query.
    """
    events = CorrectionEvent.objects
    known = None
    if kind == "visit":
        pk = _parse_int(value, "visit")
        q = Q(entity_kind=EntityKind.visit, entity_id=pk)
        where, params = "e.entity_kind = 'visit' AND e.entity_id = %s", (pk,)
        known = UserVisit.objects.filter(pk=pk).exists
        missing = f"no visit {value}: unknown to the ledger and the host"
    elif kind == "xform_id":
        xform = str(value).strip()
        if not xform:
            raise LedgerError("--xform-id: empty")
        host_ids = list(
            UserVisit.objects.filter(xform_id=xform).values_list("pk", flat=True)[:1000]
        )
        q = Q(xform_id=xform)
        where, params = "e.xform_id = %s", (xform,)
        if host_ids:
            q |= Q(entity_kind=EntityKind.visit, entity_id__in=host_ids)
            where = f"({where} OR (e.entity_kind = 'visit' AND e.entity_id = ANY(%s::bigint[])))"
            params = (xform, int_array(host_ids))
        known = lambda: bool(host_ids)  # noqa: E731 - the host knows it if it holds a visit
        missing = f"no visit with xform id {xform!r}"
        pk = None
    elif kind == "completed_work":
        pk = _parse_int(value, "completed work")
        q = Q(entity_kind=EntityKind.completed_work, entity_id=pk) | Q(completed_work_id=pk)
        where = (
            "((e.entity_kind = 'completed_work' AND e.entity_id = %s) OR e.completed_work_id = %s)"
        )
        params = (pk, pk)
        known = CompletedWork.objects.filter(pk=pk).exists
        missing = f"no completed work {value}: unknown to the ledger and the host"
    elif kind == "access":
        pk = _parse_int(value, "access")
        q = Q(access_id=pk)
        where, params = "e.access_id = %s", (pk,)
        known = OpportunityAccess.objects.filter(pk=pk).exists
        missing = f"no access {value}: unknown to the ledger and the host"
    elif kind == "opportunity":
        pk = resolve_opportunity(value)
        q = Q(opportunity_id=pk)
        where, params = "e.opportunity_id = %s", (pk,)
    elif kind == "batch":
        batch = get_batch(value)
        pk = None
        value = str(batch.pk)
        q = Q(batch_id=batch.pk)
        where, params = "e.batch_id = %s", (batch.pk,)
    else:  # pragma: no cover - argparse restricts the kinds
        raise LedgerError(f"unknown history selector {kind!r}")
    if known is not None:
        known = _unknown_raises(known, missing)
        if check and not events.filter(q).exists():
            known()
    return Resolved(Selector(kind=kind, value=str(value), resolved_id=pk), q, where, params, known)


def _unknown_raises(exists: Callable[[], bool], message: str) -> Callable[[], bool]:
    def known() -> bool:
        if not exists():
            raise NotFound(message)
        return True

    return known


_EVENT_COLUMNS = (
    "id",
    "recorded_at",
    "batch_id",
    "entity_kind",
    "entity_id",
    "completed_work_id",
    "opportunity_id",
    "access_id",
    "xform_id",
    "from_status",
    "to_status",
    "reason",
    "prior_status_modified_date",
    "new_status_modified_date",
    "inverts_id",
    "prev_hash",
    "hash",
)


def history_sql(resolved: Resolved) -> tuple[str, list]:
    """The selection's events in id order, with batch, operators and undo lineage joined in:
    the columns :func:`_history_event` reads."""
    events, batches = table(CorrectionEvent), table(CorrectionBatch)
    sql = f"""
        SELECT {", ".join("e." + c for c in _EVENT_COLUMNS)},
               b.planner, b.state, b.ticket, b.planned_by, b.applied_by, b.reverts_id,
               (SELECT u.id FROM {batches} u
                WHERE u.reverts_id = e.batch_id AND u.state = 'applied'
                ORDER BY u.created_at DESC LIMIT 1),
               i.id, i.batch_id
        FROM {events} e
        JOIN {batches} b ON b.id = e.batch_id
        LEFT JOIN {events} i ON i.inverts_id = e.id
        WHERE {resolved.where}
        ORDER BY e.id"""
    return sql, list(resolved.params)


def _str(value) -> str | None:
    return None if value is None else str(value)


def iter_history(resolved: Resolved, chunk_size: int = CHUNK_SIZE) -> Iterator[HistoryEvent]:
    """Stream the selection's events (server-side cursor, constant memory)."""
    sql, params = history_sql(resolved)
    with sql_cursor(chunked=True) as cursor:
        cursor.execute(sql, params)
        for row in chunks(cursor, chunk_size):
            yield _history_event(row)


def _history_event(row: tuple) -> HistoryEvent:
    (
        id_,
        recorded_at,
        batch_id,
        entity_kind,
        entity_id,
        completed_work_id,
        opportunity_id,
        access_id,
        xform_id,
        from_status,
        to_status,
        reason,
        prior_smd,
        new_smd,
        inverts_id,
        prev_hash,
        hash_,
        planner,
        batch_state,
        ticket,
        planned_by,
        applied_by,
        batch_reverts,
        batch_reverted_by,
        inverted_by,
        inverted_in_batch,
    ) = row
    return HistoryEvent(
        id=id_,
        recorded_at=recorded_at,
        batch=str(batch_id),
        planner=planner,
        batch_state=batch_state,
        ticket=ticket,
        planned_by=planned_by,
        applied_by=applied_by,
        entity_kind=entity_kind,
        entity_id=entity_id,
        completed_work_id=completed_work_id,
        opportunity_id=opportunity_id,
        access_id=access_id,
        xform_id=xform_id,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        prior_status_modified_date=prior_smd,
        new_status_modified_date=new_smd,
        inverts=inverts_id,
        inverted_by=inverted_by,
        inverted_in_batch=_str(inverted_in_batch),
        batch_reverts=_str(batch_reverts),
        batch_reverted_by=_str(batch_reverted_by),
        prev_hash=prev_hash,
        hash=hash_,
    )


def history(kind: str, value: str) -> list[HistoryEvent]:
    """All events of one selection, materialized (use :func:`iter_history` for big ones).

    One query when the selection has events; only when it has none is the host asked whether
    the id exists (:class:`NotFound` otherwise).
    """
    resolved = resolve(kind, value, check=False)
    sql, params = history_sql(resolved)
    with sql_cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows and resolved.known is not None:
        resolved.known()
    return [_history_event(row) for row in rows]


def _as_of_sql(resolved: Resolved) -> tuple[str, list]:
    table = CorrectionEvent._meta.db_table
    entities = (
        CorrectionEvent.objects.filter(resolved.filter)
        .order_by()
        .values("entity_kind", "entity_id")
        .distinct()
    )
    sel_sql, sel_params = entities.query.sql_with_params()
    sql = f"""
        WITH ents AS ({sel_sql})
        SELECT ents.entity_kind, ents.entity_id,
               l.id, l.to_status, l.recorded_at, l.n,
               f.id, f.from_status, f.recorded_at
        FROM ents
        LEFT JOIN LATERAL (
            SELECT e.id, e.to_status, e.recorded_at, count(*) OVER () AS n
            FROM {table} e
            WHERE e.entity_kind = ents.entity_kind AND e.entity_id = ents.entity_id
              AND e.recorded_at <= %s
            ORDER BY e.id DESC
            LIMIT 1
        ) l ON true
        CROSS JOIN LATERAL (
            SELECT e.id, e.from_status, e.recorded_at
            FROM {table} e
            WHERE e.entity_kind = ents.entity_kind AND e.entity_id = ents.entity_id
            ORDER BY e.id
            LIMIT 1
        ) f
        ORDER BY ents.entity_kind, ents.entity_id
    """
    return sql, [*sel_params]


def iter_status_as_of(
    resolved: Resolved, as_of: datetime.datetime, chunk_size: int = CHUNK_SIZE
) -> Iterator[EntityStatus]:
    """Each entity of the selection with its status at ``as_of``, from its events only.

    The entities are those the selection's events touch; their status uses *all* their events
    (a batch's visits may have been corrected again by later batches).
    """
    sql, params = _as_of_sql(resolved)
    params.append(as_of)
    with sql_cursor(chunked=True) as cur:
        cur.execute(sql, params)
        for kind, entity_id, l_id, l_to, l_at, l_n, f_id, f_from, f_at in chunks(cur, chunk_size):
            if l_id is not None:
                yield EntityStatus(
                    entity_kind=kind,
                    entity_id=entity_id,
                    status=l_to,
                    basis="event",
                    event_id=l_id,
                    event_recorded_at=l_at,
                    events_until_then=l_n,
                )
            else:
                yield EntityStatus(
                    entity_kind=kind,
                    entity_id=entity_id,
                    status=f_from,
                    basis="before_first_event",
                    event_id=f_id,
                    event_recorded_at=f_at,
                    events_until_then=0,
                )


def status_as_of(kind: str, value: str, as_of: datetime.datetime) -> list[EntityStatus]:
    return list(iter_status_as_of(resolve(kind, value), as_of))


def history_report(kind: str, value: str, as_of: datetime.datetime | None = None) -> HistoryReport:
    """What ``corrections history --json`` prints, materialized (the command streams it)."""
    resolved = resolve(kind, value)
    if as_of is None:
        return HistoryReport(selector=resolved.selector, events=list(iter_history(resolved)))
    return HistoryReport(
        selector=resolved.selector,
        as_of=as_of,
        statuses=list(iter_status_as_of(resolved, as_of)),
    )


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def _batch_sql(where: str) -> str:
    batch = CorrectionBatch._meta.db_table
    event = CorrectionEvent._meta.db_table
    recompute = AccrualRecompute._meta.db_table
    return f"""
        SELECT b.id, b.planner, b.state, b.reason, b.ticket, b.planned_by, b.applied_by,
               b.created_at, b.applied_at, b.undone_at, b.discarded_at, b.reverts_id,
               u.id, u.state,
               ev.events, ev.visits, ev.works, ev.accesses,
               rc.done, rc.pending, rc.queued, rc.busy, rc.failed,
               CASE WHEN jsonb_typeof(b.skipped_conflicts) = 'array'
                    THEN jsonb_array_length(b.skipped_conflicts) ELSE 0 END
        FROM {batch} b
        LEFT JOIN LATERAL (
            SELECT id, state FROM {batch} WHERE reverts_id = b.id ORDER BY created_at DESC LIMIT 1
        ) u ON true
        CROSS JOIN LATERAL (
            SELECT count(*) AS events,
                   count(*) FILTER (WHERE e.entity_kind = 'visit') AS visits,
                   count(*) FILTER (WHERE e.entity_kind = 'completed_work') AS works,
                   count(DISTINCT e.access_id) AS accesses
            FROM {event} e WHERE e.batch_id = b.id
        ) ev
        CROSS JOIN LATERAL (
            SELECT count(*) FILTER (WHERE r.state = 'done') AS done,
                   count(*) FILTER (WHERE r.state = 'pending') AS pending,
                   count(*) FILTER (WHERE r.state = 'pending' AND r.queued_at IS NOT NULL)
                       AS queued,
                   count(*) FILTER (WHERE r.state = 'pending' AND r.last_problem = 'busy')
                       AS busy,
                   count(*) FILTER (WHERE r.state = 'pending' AND r.last_problem = 'failed')
                       AS failed
            FROM {recompute} r WHERE r.batch_id = b.id
        ) rc
        {where}
    """


def _batch_row(row) -> BatchRow:
    (
        id_,
        planner,
        state,
        reason,
        ticket,
        planned_by,
        applied_by,
        created_at,
        applied_at,
        undone_at,
        discarded_at,
        reverts,
        reverted_by,
        reverted_by_state,
        events,
        visits,
        works,
        accesses,
        done,
        pending,
        queued,
        busy,
        failed,
        skipped,
    ) = row
    return BatchRow(
        id=str(id_),
        planner=planner,
        state=state,
        reason=reason,
        ticket=ticket,
        planned_by=planned_by,
        applied_by=applied_by,
        created_at=created_at,
        applied_at=applied_at,
        undone_at=undone_at,
        discarded_at=discarded_at,
        reverts=_str(reverts),
        reverted_by=_str(reverted_by),
        reverted_by_state=reverted_by_state,
        events=events,
        visits=visits,
        works=works,
        accesses=accesses,
        recomputes_done=done,
        recomputes_pending=pending,
        recomputes_queued=queued,
        recomputes_busy=busy,
        recomputes_failed=failed,
        skipped_conflicts=skipped,
    )


def describe_recomputes(row: BatchRow) -> str:
    """``3 done, 2 pending (1 queued, 1 busy)``: a batch's recomputes as they stand."""
    text = f"{row.recomputes_done} done, {row.recomputes_pending} pending"
    parts = [
        f"{n} {what}"
        for n, what in (
            (row.recomputes_queued, "queued"),
            (row.recomputes_busy, "busy"),
            (row.recomputes_failed, "failed"),
        )
        if n
    ]
    return text + (f" ({', '.join(parts)})" if parts else "")


def list_batches(limit: int = 200, state: str | None = None) -> BatchList:
    """The most recent batches (newest first) with counts and recompute progress."""
    where, params = "", []
    if state:
        where, params = "WHERE b.state = %s", [state]
    sql = _batch_sql(where) + " ORDER BY b.created_at DESC, b.id LIMIT %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit + 1])
        rows = cursor.fetchall()
    return BatchList(
        batches=[_batch_row(r) for r in rows[:limit]], limit=limit, more=len(rows) > limit
    )


def batch_row(batch_id: uuid.UUID) -> BatchRow:
    with connection.cursor() as cursor:
        cursor.execute(_batch_sql("WHERE b.id = %s"), [batch_id])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no batch {batch_id}")
    return _batch_row(row)


def show_batch(value: str) -> BatchDetail:
    """One batch: state, scope, reason, operators, counts, recomputes, conflicts, lineage."""
    batch = get_batch(value)
    row = batch_row(batch.pk)
    excluded: dict[str, ExcludedCount] = {}
    planned_visits = planned_works = 0
    for kind, excl, n in (
        PlannedChange.objects.filter(batch=batch)
        .order_by()
        .values_list("entity_kind", "excluded")
        .annotate(n=Count("id"))
    ):
        is_visit = kind == EntityKind.visit
        if excl:
            count = excluded.setdefault(excl, ExcludedCount(reason=excl, works=0, visits=0))
            if is_visit:
                count.visits += n
            else:
                count.works += n
        elif is_visit:
            planned_visits += n
        else:
            planned_works += n
    recomputes = [
        RecomputeRow(
            access_id=r.access_id,
            opportunity_id=r.opportunity_id,
            state=r.state,
            accrual_before=r.accrual_before,
            projected_after=r.projected_after,
            accrual_after=r.accrual_after,
            created_at=r.created_at,
            done_at=r.done_at,
            attempts=r.attempts,
            last_problem=r.last_problem,
            last_error=r.last_error,
            last_tried_at=r.last_tried_at,
            queued_at=r.queued_at,
        )
        for r in AccrualRecompute.objects.filter(batch=batch).order_by("access_id")
    ]
    events = CorrectionEvent.objects.filter(batch=batch)
    first = events.order_by("id").values_list("id", "prev_hash").first()
    last = events.order_by("-id").values_list("id", "hash").first()
    skipped = batch.skipped_conflicts if isinstance(batch.skipped_conflicts, list) else []
    return BatchDetail(
        batch=row,
        scope=batch.scope if isinstance(batch.scope, dict) else {"value": batch.scope},
        summary=batch.summary if isinstance(batch.summary, dict) else {"value": batch.summary},
        plan_digest=batch.plan_digest,
        planned=PlannedCounts(
            visits=planned_visits,
            works=planned_works,
            excluded=[excluded[reason] for reason in sorted(excluded)],
        ),
        skipped_conflicts=skipped,
        recomputes=recomputes,
        first_event_id=first[0] if first else None,
        last_event_id=last[0] if last else None,
        first_prev_hash=first[1] if first else None,
        last_hash=last[1] if last else None,
    )
