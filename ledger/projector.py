"""The projector: the only code that writes host statuses for the ledger.

``project`` runs inside the caller's transaction and applies one batch's planned changes (for
an undo batch: the inverse of the events it reverts, stored as its planned changes):

1. locks the chain head — the ledger's write lock — and reads the database clock once, so event
   ids, chain order and ``recorded_at`` agree whatever the isolation level or the clocks of the
   application servers;
2. takes what the plan's re-check needs first (an over-cap plan's claim limits,
   :mod:`ledger.assumptions`), the host's per-access accrual locks, then the units' rows — each
   work ``FOR UPDATE`` (no visit can join it until the commit) and every visit of those works
   ``FOR NO KEY UPDATE``. Nothing is ever waited for: free locks and rows are taken at once (a
   non-blocking try, ``SKIP LOCKED``) and kept, busy ones are tried again as live requests
   finish, so a request can wait for a projection but never deadlock with one. When something
   stays busy past ``LEDGER_ACCESS_LOCK_WAIT``, :class:`~ledger.errors.LockBusy` rolls the
   transaction back and the caller retries later (:mod:`ledger.retry`) — or, with
   ``skip_conflicts``, the busy units are skipped like conflicting ones;
3. re-checks what the reviewed plan assumed beyond its units (:mod:`ledger.assumptions`);
4. streams the planned changes one unit at a time (a work with its visits, or a visit on its
   own) with each entity's state under the locks, compares the whole expected state — every
   member's status, the work each visit belongs to, the visits (with statuses) each work
   holds, each entity's latest ledger event (for an undo: the one it inverts, still in force) —
   and, for units that still hold, builds their chained events and appends them with ``COPY``;
   a conflicting unit refuses the whole batch with a per-entity list naming what differs and
   which batch owns the current state, or, when asked, is skipped and recorded;
5. updates visits and works set-based from the planned changes (skipped units left out),
   writes one pending accrual recompute row per affected access, and moves the head.

The batch is never held in memory: the planned changes stay in the database, the stream is read
a chunk at a time, and only the ids of the locked rows and the conflicts are kept. No event
without its change and no change without its event: both happen in one transaction.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.db import connection

from ledger import chain, conf, host
from ledger.assumptions import Assumptions
from ledger.errors import ConflictError, StalePlan
from ledger.head import lock_head, move_events
from ledger.host import CompletedWork, OpportunityAccess, UserVisit
from ledger.locks import take_access_locks
from ledger.models import (
    AccrualRecompute,
    CorrectionBatch,
    CorrectionEvent,
    EntityKind,
    PlannedChange,
)
from ledger.schema import Conflict
from ledger.sql import (
    CHUNK,
    chunks,
    db_now,
    insert_rows,
    int_array,
    lock_ids_patiently,
    reserve_ids,
    table,
)
from ledger.sql import cursor as sql_cursor
from ledger.state import batches_of, members_text, parse_members, unit_of

VISIT = EntityKind.visit.value
WORK = EntityKind.completed_work.value
HELD = "held by a live request"

# The hashed content, in chain order, then the format and the two hashes.
_EVENT_COLUMNS = (*chain.CONTENT_FIELDS, "hash_format", "prev_hash", "hash")


@dataclass
class Projection:
    events: int = 0
    visits: int = 0
    works: int = 0
    access_ids: list[int] = field(default_factory=list)
    skipped: list[Conflict] = field(default_factory=list)
    recorded_at: datetime.datetime | None = None


class _Planned:
    """SQL over one batch's planned changes to flip (``excluded = ''``), aliased ``p``."""

    def __init__(self, batch: CorrectionBatch) -> None:
        self.batch_id = batch.pk
        self.where = "p.batch_id = %s AND p.excluded = ''"

    def ids(self, kind: str) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT p.entity_id FROM {table(PlannedChange)} p
                    WHERE {self.where} AND p.entity_kind = %s ORDER BY p.entity_id""",
                [self.batch_id, kind],
            )
            return [pk for (pk,) in cursor.fetchall()]

    def access_ids(self) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT DISTINCT p.access_id FROM {table(PlannedChange)} p
                    WHERE {self.where} AND p.access_id IS NOT NULL ORDER BY 1""",
                [self.batch_id],
            )
            return [pk for (pk,) in cursor.fetchall()]

    def member_visit_ids(self) -> list[int]:
        """Every visit of the planned works and every listed visit."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT v.id FROM {table(UserVisit)} v
                    WHERE v.completed_work_id IN (
                        SELECT p.entity_id FROM {table(PlannedChange)} p
                        WHERE {self.where} AND p.entity_kind = 'completed_work')
                    UNION
                    SELECT p.entity_id FROM {table(PlannedChange)} p
                    WHERE {self.where} AND p.entity_kind = 'visit'
                    ORDER BY 1""",
                [self.batch_id, self.batch_id],
            )
            return [pk for (pk,) in cursor.fetchall()]


@dataclass
class _Locked:
    """What the locks left out: rows live traffic kept past the wait (skipping only)."""

    busy_works: set[int] = field(default_factory=set)
    busy_visits: set[int] = field(default_factory=set)
    # Planned works one of whose visits stayed busy: their units cannot be compared safely.
    busy_members: set[int] = field(default_factory=set)


def _lock_units(planned: _Planned, skip_busy: bool, deadline: float) -> _Locked:
    """Lock every row of the batch's units, patiently.

    Works first, ``FOR UPDATE``: no visit can join a locked work until the commit, so the
    visits locked next are all the work holds. Then those visits and the listed ones,
    ``FOR NO KEY UPDATE``. With ``skip_busy``, rows live traffic still holds at the deadline
    are reported (their units are skipped) instead of giving the attempt up.
    """
    busy_works: list[int] | None = [] if skip_busy else None
    busy_visits: list[int] | None = [] if skip_busy else None
    lock_ids_patiently(
        CompletedWork, planned.ids(WORK), strength="UPDATE", deadline=deadline, busy=busy_works
    )
    lock_ids_patiently(UserVisit, planned.member_visit_ids(), deadline=deadline, busy=busy_visits)
    locked = _Locked(set(busy_works or ()), set(busy_visits or ()))
    if locked.busy_visits:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT DISTINCT completed_work_id FROM {table(UserVisit)}
                    WHERE id = ANY(%s::bigint[]) AND completed_work_id IS NOT NULL""",
                [int_array(locked.busy_visits)],
            )
            locked.busy_members = {pk for (pk,) in cursor.fetchall()}
    return locked


def _stream_sql(undo: bool) -> str:
    """Each planned change with its entity's state under the locks, in unit order.

    Columns: kind, id, work, opportunity, access, xform, from, to, expected event, expected
    visits, found, status now, work now, stamp now, latest event, latest event still in force
    (undo only, where the inverted event is not the latest), visits now (works), the stamp an
    undo restores. ``OFFSET 0`` keeps the inner query whole, so each entity's latest event is
    looked up once.
    """
    events, works, visits = table(CorrectionEvent), table(CompletedWork), table(UserVisit)
    planned = table(PlannedChange)
    latest = f"""(SELECT max(e.id) FROM {events} e
                  WHERE e.entity_kind = p.entity_kind AND e.entity_id = p.entity_id)"""
    live = (
        f"""(SELECT max(e.id) FROM {events} e
             WHERE e.entity_kind = s.entity_kind AND e.entity_id = s.entity_id
               AND e.inverts_id IS NULL
               AND NOT EXISTS (SELECT 1 FROM {events} i WHERE i.inverts_id = e.id))"""
        if undo
        else "NULL::bigint"
    )
    restore = "inv.prior_status_modified_date" if undo else "NULL::timestamptz"
    inverted = f"LEFT JOIN {events} inv ON inv.id = p.prev_event_id" if undo else ""
    return f"""
        SELECT s.*, CASE WHEN s.latest_now IS DISTINCT FROM s.prev_event_id THEN {live}
                    END AS live_now
        FROM (
            SELECT p.entity_kind, p.entity_id, p.completed_work_id, p.opportunity_id,
                   p.access_id, p.xform_id, p.from_status, p.to_status, p.prev_event_id,
                   p.members,
                   COALESCE(w.id, v.id) IS NOT NULL AS found,
                   COALESCE(w.status, v.status) AS status_now,
                   v.completed_work_id AS work_now,
                   COALESCE(w.status_modified_date, v.status_modified_date) AS stamp_now,
                   {latest} AS latest_now,
                   CASE WHEN p.entity_kind = 'completed_work' THEN (
                       SELECT string_agg(m.id::text || ':' || m.status, ',' ORDER BY m.id)
                       FROM {visits} m WHERE m.completed_work_id = p.entity_id) END
                       AS members_now,
                   {restore} AS restore,
                   CASE WHEN p.completed_work_id IS NOT NULL THEN 'completed_work'
                        ELSE p.entity_kind END AS unit_kind,
                   COALESCE(p.completed_work_id, p.entity_id) AS unit_id
            FROM {planned} p
            LEFT JOIN {works} w ON p.entity_kind = 'completed_work' AND w.id = p.entity_id
            LEFT JOIN {visits} v ON p.entity_kind = 'visit' AND v.id = p.entity_id
            {inverted}
            WHERE p.batch_id = %s AND p.excluded = ''
            OFFSET 0
        ) s
        ORDER BY s.unit_kind, s.unit_id, s.entity_kind, s.entity_id"""


_COLUMNS = (
    "entity_kind", "entity_id", "completed_work_id", "opportunity_id", "access_id", "xform_id",
    "from_status", "to_status", "prev_event_id", "members", "found", "status_now", "work_now",
    "stamp_now", "latest_now", "members_now", "restore", "unit_kind", "unit_id", "live_now",
)  # fmt: skip
_AT = {name: i for i, name in enumerate(_COLUMNS)}
KIND, ID, WORK_ID, FROM, TO, EXPECTED_EVENT, MEMBERS = (
    _AT[n]
    for n in ("entity_kind", "entity_id", "completed_work_id", "from_status", "to_status",
              "prev_event_id", "members")
)  # fmt: skip


def _units(cursor) -> Iterator[list[tuple]]:
    """The streamed rows grouped by unit (they come in unit order)."""
    unit: list[tuple] = []
    key = None
    for row in chunks(cursor):
        here = (row[_AT["unit_kind"]], row[_AT["unit_id"]])
        if here != key and unit:
            yield unit
            unit = []
        key = here
        unit.append(row)
    if unit:
        yield unit


def _differences(row: tuple, undo: bool, locked: _Locked) -> list[tuple[str, object, object]]:
    """What of one member's expected state no longer holds: ``(what, expected, found)``."""
    kind, pk = row[KIND], row[ID]
    if (kind == WORK and (pk in locked.busy_works or pk in locked.busy_members)) or (
        kind == VISIT and pk in locked.busy_visits
    ):
        return [("busy", "free", HELD)]
    if not row[_AT["found"]]:
        return [("missing", pk, None)]
    found: list[tuple[str, object, object]] = []
    now = row[_AT["status_now"]]
    if now != row[FROM]:
        found.append(("status", row[FROM], now))
    elif kind == VISIT and row[_AT["work_now"]] != row[WORK_ID]:
        found.append(("completed_work", row[WORK_ID], row[_AT["work_now"]]))
    elif kind == WORK and row[MEMBERS] is not None:
        holds = row[_AT["members_now"]] or ""
        if holds != row[MEMBERS]:
            found.append(("visits", row[MEMBERS] or "(none)", holds or "(none)"))
    latest = _against(row, undo)
    if latest != row[EXPECTED_EVENT]:
        found.append(("latest_event", row[EXPECTED_EVENT], latest))
    return found


def _against(row: tuple, undo: bool) -> int | None:
    """The event an expectation is compared with: the entity's latest — for an undo whose
    inverted event is not the latest any more, the latest still in force (undo events and
    events already inverted passed over, so batches can be undone newest first)."""
    latest = row[_AT["latest_now"]]
    if undo and latest != row[EXPECTED_EVENT]:
        return row[_AT["live_now"]]
    return latest


def _conflicts_of(unit: list[tuple], undo: bool, locked: _Locked) -> list[tuple]:
    return [
        (row, what, expected, found)
        for row in unit
        for what, expected, found in _differences(row, undo, locked)
    ]


def _members_after(now: str | None, flipped: dict[int, str]) -> str:
    """A work's visits after the flip (what its event records): as now, with the unit's
    flipped visits at their new status."""
    members = parse_members(now)
    for pk, status in flipped.items():
        if pk in members:
            members[pk] = status
    return members_text(members)


def _as_conflicts(found: list[tuple], undo: bool) -> list[Conflict]:
    """Conflicts named as an operator reads them, with the batch owning each entity's state."""
    owner_event = {}
    for row, *_ in found:
        latest = _against(row, undo)
        if latest is not None and latest != row[EXPECTED_EVENT]:
            owner_event[(row[KIND], row[ID])] = latest
    owners = batches_of(owner_event.values())
    return [
        Conflict(
            entity_kind=row[KIND],
            entity_id=row[ID],
            completed_work_id=row[WORK_ID],
            expected_status=row[FROM],
            found_status=row[_AT["status_now"]] if row[_AT["found"]] else None,
            what=what,
            expected=None if expected is None else str(expected),
            found=None if actual is None else str(actual),
            owner_batch=owners.get(owner_event.get((row[KIND], row[ID]))),
        )
        for row, what, expected, actual in found
    ]


def _write_recomputes(
    batch: CorrectionBatch, skipped: _Skipped, projected: dict[int, int], at: datetime.datetime
) -> list[int]:
    """One pending recompute row per access whose units were flipped; their ids."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table(AccrualRecompute)}
                    (batch_id, access_id, opportunity_id, state, accrual_before,
                     projected_after, created_at)
                SELECT %s, a.id, a.opportunity_id, 'pending', a.payment_accrued,
                       pr.projected, %s
                FROM {table(OpportunityAccess)} a
                LEFT JOIN unnest(%s::bigint[], %s::bigint[]) AS pr(id, projected)
                       ON pr.id = a.id
                WHERE a.id IN (
                    SELECT p.access_id FROM {table(PlannedChange)} p
                    WHERE p.batch_id = %s AND p.excluded = '' AND {skipped.not_sql()})
                ORDER BY a.id
                RETURNING access_id""",
            [batch.pk, at, int_array(projected), int_array(projected.values()), batch.pk,
             *skipped.params()],
        )  # fmt: skip
        return sorted(pk for (pk,) in cursor.fetchall())


@dataclass
class _Skipped:
    """The units left out of the projection, as SQL over planned changes aliased ``p``."""

    works: set[int] = field(default_factory=set)
    visits: set[int] = field(default_factory=set)  # visits without a work

    def add(self, unit_kind: str, unit_id: int) -> None:
        (self.works if unit_kind == WORK else self.visits).add(unit_id)

    def not_sql(self) -> str:
        return (
            "NOT (COALESCE(p.completed_work_id, 0) = ANY(%s::bigint[]) "
            "OR (p.completed_work_id IS NULL AND p.entity_id = ANY(%s::bigint[])))"
        )

    def params(self) -> list[str]:
        return [int_array(self.works), int_array(self.visits)]


def _update(model, kind: str, batch: CorrectionBatch, skipped: _Skipped, stamp_sql: str,
            stamp_params: list, undo: bool) -> None:  # fmt: skip
    """Set status and status_modified_date of the batch's flipped rows of one table."""
    inverted = f"LEFT JOIN {table(CorrectionEvent)} inv ON inv.id = p.prev_event_id" if undo else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {table(model)} t SET status = u.to_status, status_modified_date = u.stamp
                FROM (SELECT p.entity_id, p.to_status, {stamp_sql} AS stamp
                      FROM {table(PlannedChange)} p {inverted}
                      WHERE p.batch_id = %s AND p.excluded = '' AND p.entity_kind = %s
                        AND {skipped.not_sql()}) u
                WHERE t.id = u.entity_id""",
            [*stamp_params, batch.pk, kind, *skipped.params()],
        )


def project(
    batch: CorrectionBatch,
    *,
    reason: str,
    skip_conflicts: bool,
    releases: list[Callable[[], None]],
    undo: bool = False,
    projected_accruals: dict[int, int] | None = None,
    assumptions: Assumptions | None = None,
) -> Projection:
    """Apply ``batch``'s planned changes as its events; call inside ``transaction.atomic()``.

    ``undo``: the planned changes invert the events their ``prev_event_id`` names (each
    restores the ``status_modified_date`` its event overwrote). Locks that outlive the
    transaction (the host's accrual locks in Redis) are handed back through ``releases``: the
    caller calls each once its transaction has ended, whether it committed or rolled back.
    ``assumptions`` are what the batch's reviewed plan relied on beyond its units' own state;
    they are checked under the same locks (:mod:`ledger.assumptions`), and a unit where one no
    longer holds is stale.
    """
    head = lock_head()
    now_at = db_now()
    deadline = time.monotonic() + conf.get("ACCESS_LOCK_WAIT")
    planned = _Planned(batch)
    # An over-cap plan's claim limits before anything else, as the host's form processor
    # takes them: a submission holding one has taken nothing else of ours to wait for.
    if assumptions:
        assumptions.lock_caps(deadline, skipping=skip_conflicts)
    # Then the accrual locks: the host's recompute holds its access's lock while it writes
    # the access's works, so a request inside its recompute can only finish if the projection
    # does not hold those rows yet; requests that have not reached their recompute wait at the
    # lock until the projection commits.
    access_ids = planned.access_ids()
    lock = host.access_lock()
    if lock is not None and access_ids:
        releases.append(take_access_locks(lock, access_ids, conf.get("ACCESS_LOCK_WAIT")))
    locked = _lock_units(planned, skip_busy=skip_conflicts, deadline=deadline)
    skipped = _Skipped()
    stale: list[Conflict] = []
    if assumptions:
        busy = None
        if skip_conflicts:
            busy = {(WORK, pk) for pk in locked.busy_works | locked.busy_members}
            busy |= _units_of_visits(batch, locked.busy_visits)
        stale = assumptions.check(deadline, busy)
        for c in stale:
            skipped.add(*unit_of(c.entity_kind, c.entity_id, c.completed_work_id))
    if stale and not skip_conflicts:
        units = {unit_of(c.entity_kind, c.entity_id, c.completed_work_id) for c in stale}
        raise StalePlan(
            f"batch {batch.pk} is stale: what its reviewed plan assumed no longer holds for "
            f"{len(units)} units",
            stale,
        )

    result = Projection(recorded_at=now_at, skipped=list(stale))
    found: list[tuple] = []
    prev, last_id = head.event_hash, head.event_id
    batch_id = str(batch.pk)
    events: list[tuple] = []

    def flush() -> None:
        nonlocal prev, last_id
        ids = reserve_ids(CorrectionEvent, len(events))
        written = []
        for event_id, values in zip(ids, events, strict=True):
            values = (event_id, *values)
            prev_hash, prev = prev, chain.hash_values(prev, values)
            written.append((*values, chain.CURRENT_FORMAT, prev_hash, prev))
        insert_rows(CorrectionEvent, _EVENT_COLUMNS, written)
        last_id = ids[-1]
        events.clear()

    # The events' ids are hashed (format 3), so they are drawn before the rows are written;
    # under the head's lock, ids drawn later are larger than every event before.
    with sql_cursor(chunked=True) as cursor:
        cursor.execute(_stream_sql(undo), [batch.pk])
        for unit in _units(cursor):
            first = unit[0]
            unit_key = (first[_AT["unit_kind"]], first[_AT["unit_id"]])
            if (
                unit_key[0] == WORK
                and unit_key[1] in skipped.works
                or (unit_key[0] == VISIT and unit_key[1] in skipped.visits)
            ):
                continue  # stale: reported by the re-check already
            differs = _conflicts_of(unit, undo, locked)
            if differs:
                found.extend(differs)
                skipped.add(*unit_key)
                if not skip_conflicts and len(found) > MAX_CONFLICTS_READ:
                    break
                continue
            if found and not skip_conflicts:
                continue  # refused anyway: only the conflicts are still of interest
            flipped = {row[ID]: row[TO] for row in unit if row[KIND] == VISIT}
            for row in unit:
                is_work = row[KIND] == WORK
                stamp = row[_AT["restore"]] if undo else now_at
                events.append((
                    batch_id, row[KIND], row[ID], row[WORK_ID], row[_AT["opportunity_id"]],
                    row[_AT["access_id"]], row[_AT["xform_id"]], row[FROM], row[TO], reason,
                    row[EXPECTED_EVENT] if undo else None,
                    row[_AT["stamp_now"]], stamp, now_at, row[_AT["latest_now"]],
                    _members_after(row[_AT["members_now"]], flipped) if is_work else None,
                ))  # fmt: skip
                result.events += 1
                result.visits += not is_work
            if len(events) >= CHUNK:
                flush()
    if found:
        conflicts = _as_conflicts(found, undo)
        if not skip_conflicts:
            raise ConflictError(
                f"{len({(c.entity_kind, c.entity_id) for c in conflicts})} entities are no "
                "longer as the batch expects",
                conflicts,
            )
        result.skipped += conflicts
    if events:
        flush()
    result.works = result.events - result.visits
    if not result.events:
        return result
    move_events(last_id, prev, result.events, now_at)
    stamp_sql = "inv.prior_status_modified_date" if undo else "%s::timestamptz"
    stamp_params = [] if undo else [now_at]
    for model, kind in ((UserVisit, VISIT), (CompletedWork, WORK)):
        _update(model, kind, batch, skipped, stamp_sql, stamp_params, undo)
    result.access_ids = _write_recomputes(batch, skipped, projected_accruals or {}, now_at)
    return result


# Without --skip-conflicts a batch with conflicts is refused whole: the refusal lists this
# many entities at most, instead of reading the rest of a batch that will not be applied.
MAX_CONFLICTS_READ = 10_000


def _units_of_visits(batch: CorrectionBatch, visit_ids: set[int]) -> set[tuple[str, int]]:
    """The units of these visits in the batch's plan."""
    if not visit_ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT CASE WHEN p.completed_work_id IS NOT NULL THEN 'completed_work'
                            ELSE p.entity_kind END, COALESCE(p.completed_work_id, p.entity_id)
                FROM {table(PlannedChange)} p
                WHERE p.batch_id = %s AND p.entity_kind = 'visit'
                  AND p.entity_id = ANY(%s::bigint[])""",
            [batch.pk, int_array(visit_ids)],
        )
        return set(cursor.fetchall())
