"""The projector: the only code that writes host statuses for the ledger.

``project`` runs inside the caller's transaction and, for one batch:

1. locks the chain head — the ledger's write lock — and reads the database clock once, so event
   ids, chain order and ``recorded_at`` agree whatever the isolation level or the clocks of the
   application servers;
2. takes the host's per-access accrual locks, then locks the units' rows — each work
   ``FOR UPDATE`` (no visit can join it until the commit) and every visit of those works
   ``FOR NO KEY UPDATE``. Nothing is ever waited for: free locks and rows are taken at once (a
   non-blocking try, ``SKIP LOCKED``) and kept, busy ones are tried again as live requests
   finish, so a request can wait for a projection but never deadlock with one. Accrual locks
   come first because the host's recompute holds its access's lock while it writes that
   access's works. When something stays busy past ``LEDGER_ACCESS_LOCK_WAIT``,
   :class:`~ledger.errors.LockBusy` rolls the transaction back and the caller retries later
   (:mod:`ledger.retry`) — or, with ``skip_conflicts``, the busy units are skipped like
   conflicting ones;
3. compares each unit's whole expected state: every member's status, the work each visit
   belongs to, the visits (with statuses) each work holds, and each entity's latest ledger
   event — the one the plan saw, or for an undo the event it inverts;
4. on conflict refuses the whole batch with a per-entity list naming what differs and which
   batch owns the current state — or, when asked, skips every unit with a conflicting member;
5. updates visits and works set-based, appends the chained events (each naming the entity's
   previous event), writes one pending accrual recompute row per affected access, and moves
   the head.

No event without its change and no change without its event: both happen in one transaction.
"""

from __future__ import annotations

import datetime
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from django.db import connection

from ledger import chain, conf, host
from ledger.assumptions import Assumptions
from ledger.errors import ConflictError, StalePlan
from ledger.head import lock_head, move_events
from ledger.host import CompletedWork, OpportunityAccess, UserVisit
from ledger.locks import take_access_locks
from ledger.models import AccrualRecompute, CorrectionBatch, CorrectionEvent, EntityKind
from ledger.schema import Conflict
from ledger.sql import (
    CHUNK,
    db_now,
    ids_where,
    insert_rows,
    int_array,
    lock_rows_patiently,
    reserve_ids,
    table,
    text_array,
)
from ledger.state import Latest, batches_of, latest_events, members_text, unit_of

FEW_GROUPS = 20  # up to this many (status, stamp) groups, update each by id list
VISIT = EntityKind.visit.value
WORK = EntityKind.completed_work.value


class Flip(NamedTuple):
    entity_kind: str
    entity_id: int
    completed_work_id: int | None  # the unit: the work itself, or a visit's work
    opportunity_id: int
    access_id: int | None
    xform_id: str | None
    from_status: str
    to_status: str
    inverts_id: int | None = None
    # For undo: the status_modified_date to restore; None means "now".
    restore_status_modified_date: datetime.datetime | None = None
    # The entity's latest ledger event expected now (None: it has none).
    prev_event_id: int | None = None
    # For a work: the visits (``id:status,…``) it is expected to hold now.
    members: str | None = None


@dataclass
class Projection:
    events: int = 0
    visits: int = 0
    works: int = 0
    access_ids: list[int] = field(default_factory=list)
    skipped: list[Conflict] = field(default_factory=list)
    recorded_at: datetime.datetime | None = None


@dataclass
class _Now:
    """What the rows look like under the projection's locks."""

    works: dict[int, tuple]  # id -> (status, status_modified_date, access id)
    visits: dict[int, tuple]  # id -> (status, status_modified_date, completed_work_id)
    members: dict[int, dict[int, str]]  # work id -> {visit id: status}
    latest: Latest  # each entity's latest ledger event
    live: Latest  # the same, passing over undone events (undo flips not inverting the latest)
    busy: set[tuple[str, int]]  # rows live traffic kept past the wait (skipped units only)


def _lock_units(flips: Sequence[Flip], skip_busy: bool, deadline: float) -> _Now:
    """Lock every row of the batch's units, patiently, and read their state under the locks.

    Works first, ``FOR UPDATE``: no visit can join a locked work until the commit, so the
    visits read next are all the work holds. Then those visits and the listed ones,
    ``FOR NO KEY UPDATE``. With ``skip_busy``, rows live traffic still holds at the deadline
    are reported busy (their units are skipped) instead of giving the attempt up.
    """
    busy_works: list[int] | None = [] if skip_busy else None
    busy_visits: list[int] | None = [] if skip_busy else None
    work_ids = sorted({f.entity_id for f in flips if f.entity_kind == WORK})
    works = lock_rows_patiently(
        CompletedWork,
        ("status", "status_modified_date", "opportunity_access_id"),
        work_ids,
        strength="UPDATE",
        deadline=deadline,
        busy=busy_works,
    )
    visit_ids = {f.entity_id for f in flips if f.entity_kind == VISIT}
    visit_ids.update(ids_where(UserVisit, "completed_work_id", list(works)))
    visits = lock_rows_patiently(
        UserVisit,
        ("status", "status_modified_date", "completed_work_id"),
        sorted(visit_ids),
        deadline=deadline,
        busy=busy_visits,
    )
    busy = {(WORK, pk) for pk in busy_works or ()} | {(VISIT, pk) for pk in busy_visits or ()}
    members: dict[int, dict[int, str]] = {pk: {} for pk in works}
    for pk, (status, _, work_id) in visits.items():
        if work_id in members:
            members[work_id][pk] = status
    pairs = [(f.entity_kind, f.entity_id) for f in flips]
    latest = latest_events(pairs)
    undoing = [
        (f.entity_kind, f.entity_id)
        for f in flips
        if f.inverts_id is not None and not _inverts_latest(f, latest)
    ]
    return _Now(works, visits, members, latest, latest_events(undoing, live=True), busy)


def _differences(f: Flip, row: tuple | None, now: _Now) -> list[tuple[str, object, object]]:
    """What of the unit member's expected state no longer holds: ``(what, expected, found)``."""
    found: list[tuple[str, object, object]] = []
    if (f.entity_kind, f.entity_id) in now.busy:
        return [("busy", "free", "held by a live request")]
    if row is None:
        return [("missing", f.entity_id, None)]
    if row[0] != f.from_status:
        found.append(("status", f.from_status, row[0]))
    elif f.entity_kind == VISIT and row[2] != f.completed_work_id:
        found.append(("completed_work", f.completed_work_id, row[2]))
    elif f.entity_kind == WORK and f.members is not None:
        holds = members_text(now.members.get(f.entity_id, {}))
        if holds != f.members:
            found.append(("visits", f.members or "(none)", holds or "(none)"))
    latest = _expected_against(f, now)
    if latest != f.prev_event_id:
        found.append(("latest_event", f.prev_event_id, latest))
    return found


def _inverts_latest(f: Flip, latest: Latest) -> bool:
    """An undo flip whose inverted event is its entity's latest of all.

    That event is then also the latest still in force (nothing inverted it yet), so the second
    lookup, which passes over undone events, is needed only for the other undo flips — usually
    none.
    """
    return latest.get(f.entity_kind, f.entity_id) == f.inverts_id


def _expected_against(f: Flip, now: _Now) -> int | None:
    """The event an expectation is compared with: for an undo, the latest one still in force."""
    if f.inverts_id is None or _inverts_latest(f, now.latest):
        return now.latest.get(f.entity_kind, f.entity_id)
    return now.live.get(f.entity_kind, f.entity_id)


def _conflicts(flips: Sequence[Flip], now: _Now) -> list[Conflict]:
    found: list[tuple[Flip, tuple | None, int | None, str, object, object]] = []
    for f in flips:
        row = (now.works if f.entity_kind == WORK else now.visits).get(f.entity_id)
        latest = _expected_against(f, now)
        # Another batch owns the current state when the entity's latest event is not the one
        # this batch expects.
        owner_event = latest if latest is not None and latest != f.prev_event_id else None
        for what, expected, actual in _differences(f, row, now):
            found.append((f, row, owner_event, what, expected, actual))
    owners = batches_of(e for _, _, e, *_ in found if e is not None)
    return [
        Conflict(
            entity_kind=f.entity_kind,
            entity_id=f.entity_id,
            completed_work_id=f.completed_work_id,
            expected_status=f.from_status,
            found_status=row[0] if row else None,
            what=what,
            expected=None if expected is None else str(expected),
            found=None if actual is None else str(actual),
            owner_batch=owners.get(owner_event) if owner_event is not None else None,
        )
        for f, row, owner_event, what, expected, actual in found
    ]


def _update(model, rows: list[tuple[int, str, datetime.datetime | None]]) -> None:
    """Set status and status_modified_date of (id, status, stamp) rows.

    An apply gives every row one status and one stamp, and an undo often restores only a few
    distinct stamps: each such group is one ``WHERE id = ANY(…)``. Otherwise the per-row values
    are joined from arrays.
    """
    if not rows:
        return
    groups: dict[tuple[str, datetime.datetime | None], list[int]] = defaultdict(list)
    for pk, status, stamp in rows:
        groups[(status, stamp)].append(pk)
        if len(groups) > FEW_GROUPS:
            break
    with connection.cursor() as cursor:
        if len(groups) <= FEW_GROUPS:
            for (status, stamp), ids in groups.items():
                cursor.execute(
                    f"""UPDATE {table(model)} SET status = %s, status_modified_date = %s
                        WHERE id = ANY(%s::bigint[])""",
                    [status, stamp, int_array(ids)],
                )
            return
        ids, statuses, stamps = (list(col) for col in zip(*rows, strict=True))
        cursor.execute(
            f"""UPDATE {table(model)} t
                SET status = u.status, status_modified_date = u.modified
                FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[])
                     AS u(id, status, modified)
                WHERE t.id = u.id""",
            [int_array(ids), text_array(statuses), text_array(stamps)],
        )


# The hashed content (the id first), in chain order, then the format and the two hashes.
_EVENT_COLUMNS = (*chain.CONTENT_FIELDS, "hash_format", "prev_hash", "hash")


def _write_recomputes(
    batch: CorrectionBatch,
    access_ids: list[int],
    projected: dict[int, int],
    at: datetime.datetime,
) -> None:
    if not access_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table(AccrualRecompute)}
                    (batch_id, access_id, opportunity_id, state, accrual_before,
                     projected_after, created_at)
                SELECT %s, a.id, a.opportunity_id, 'pending', a.payment_accrued,
                       p.projected, %s
                FROM {table(OpportunityAccess)} a
                LEFT JOIN unnest(%s::bigint[], %s::bigint[]) AS p(id, projected)
                       ON p.id = a.id
                WHERE a.id = ANY(%s)
                ORDER BY a.id""",
            [batch.pk, at, list(projected), list(projected.values()), access_ids],
        )


def project(
    batch: CorrectionBatch,
    flips: Sequence[Flip],
    *,
    reason: str,
    skip_conflicts: bool,
    releases: list[Callable[[], None]],
    projected_accruals: dict[int, int] | None = None,
    assumptions: Assumptions | None = None,
) -> Projection:
    """Apply ``flips`` as events of ``batch``; call inside ``transaction.atomic()``.

    Locks that outlive the transaction (the host's accrual locks in Redis) are handed back
    through ``releases``: the caller calls each once its transaction has ended, whether it
    committed or rolled back. ``assumptions`` are what the batch's reviewed plan relied on
    beyond its units' own state; they are checked under the same locks
    (:mod:`ledger.assumptions`), and a unit where one no longer holds is stale.
    """
    head = lock_head()
    head_id, head_hash = head.event_id, head.event_hash
    now_at = db_now()
    deadline = time.monotonic() + conf.get("ACCESS_LOCK_WAIT")
    # An over-cap plan's claim limits before anything else, as the host's form processor
    # takes them: a submission holding one has taken nothing else of ours to wait for.
    if assumptions:
        assumptions.lock_caps(deadline, skipping=skip_conflicts)
    # Then the accrual locks: the host's recompute holds its access's lock while it writes
    # the access's works, so a request inside its recompute can only finish if the projection
    # does not hold those rows yet; requests that have not reached their recompute wait at the
    # lock until the projection commits.
    access_ids = sorted({f.access_id for f in flips if f.access_id is not None})
    lock = host.access_lock()
    if lock is not None and access_ids:
        releases.append(take_access_locks(lock, access_ids, conf.get("ACCESS_LOCK_WAIT")))
    current = _lock_units(flips, skip_busy=skip_conflicts, deadline=deadline)
    stale: list[Conflict] = []
    if assumptions:
        busy = None
        if skip_conflicts:
            busy = {
                unit_of(f.entity_kind, f.entity_id, f.completed_work_id)
                for f in flips
                if (f.entity_kind, f.entity_id) in current.busy
            }
        stale = assumptions.check(flips, current.works, deadline, busy)

    result = Projection(recorded_at=now_at)
    conflicts = _conflicts(flips, current)
    if stale and not skip_conflicts:
        units = {unit_of(c.entity_kind, c.entity_id, c.completed_work_id) for c in stale}
        raise StalePlan(
            f"batch {batch.pk} is stale: what its reviewed plan assumed no longer holds for "
            f"{len(units)} units",
            stale + conflicts,
        )
    conflicts = stale + conflicts
    if conflicts:
        if not skip_conflicts:
            raise ConflictError(
                f"{len({(c.entity_kind, c.entity_id) for c in conflicts})} entities are no "
                "longer as the batch expects",
                conflicts,
            )
        bad = {unit_of(c.entity_kind, c.entity_id, c.completed_work_id) for c in conflicts}
        result.skipped = conflicts
        flips = [
            f for f in flips if unit_of(f.entity_kind, f.entity_id, f.completed_work_id) not in bad
        ]

    # Each work's visits after the flip, recorded on its event (the lock-time view is not
    # needed any more: updated in place).
    after = current.members
    for f in flips:
        if f.entity_kind == VISIT and f.completed_work_id in after:
            after[f.completed_work_id][f.entity_id] = f.to_status

    # Flip and record a chunk at a time: memory stays bounded by the chunk, not the batch.
    prev, last_id = head_hash, head_id
    batch_id = str(batch.pk)
    for start in range(0, len(flips), CHUNK):
        part = flips[start : start + CHUNK]
        stamps = [
            f.restore_status_modified_date if f.inverts_id is not None else now_at for f in part
        ]
        _update(
            UserVisit,
            [(f.entity_id, f.to_status, s) for f, s in zip(part, stamps, strict=True)
             if f.entity_kind == VISIT],
        )  # fmt: skip
        _update(
            CompletedWork,
            [(f.entity_id, f.to_status, s) for f, s in zip(part, stamps, strict=True)
             if f.entity_kind == WORK],
        )  # fmt: skip
        events = []
        # The id is hashed (format 3), so it is drawn before the row is written; under the
        # head's lock, ids drawn later are larger than every event before.
        ids = reserve_ids(CorrectionEvent, len(part))
        for event_id, f, stamp in zip(ids, part, stamps, strict=True):
            is_work = f.entity_kind == WORK
            row = (current.works if is_work else current.visits)[f.entity_id]
            latest = current.latest.get(f.entity_kind, f.entity_id)
            values = (
                event_id, batch_id, f.entity_kind, f.entity_id, f.completed_work_id,
                f.opportunity_id, f.access_id, f.xform_id, f.from_status, f.to_status, reason,
                f.inverts_id,
                row[1], stamp, now_at, latest,
                members_text(after.get(f.entity_id, {})) if is_work else None,
            )  # fmt: skip
            prev_hash, prev = prev, chain.hash_values(prev, values)
            events.append((*values, chain.CURRENT_FORMAT, prev_hash, prev))
        insert_rows(CorrectionEvent, _EVENT_COLUMNS, events)
        last_id = ids[-1]
        result.events += len(part)
        result.visits += sum(1 for f in part if f.entity_kind == VISIT)
    result.works = result.events - result.visits
    if result.events:
        move_events(last_id, prev, result.events, now_at)

    touched = sorted({f.access_id for f in flips if f.access_id is not None})
    _write_recomputes(batch, touched, projected_accruals or {}, now_at)
    result.access_ids = touched
    return result
