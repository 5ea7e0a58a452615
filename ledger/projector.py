"""The projector: the only code that writes host statuses for the ledger.

``project`` runs inside the caller's transaction and, for one batch:

1. takes the ledger's advisory lock, so events are chained and committed one batch at a time
   (event order is commit order);
2. takes the host's per-access accrual lock through the ``LEDGER_ACCESS_LOCK`` hook, so a host
   recompute cannot write back statuses it read before the flip;
3. locks the target rows in id order (``FOR NO KEY UPDATE``: new visits may still reference
   the works) and compares each row's status with the event's from status;
4. on conflict refuses the whole batch with a per-entity list — or, when asked, skips every
   unit (a completed work with its visits) that has a conflicting member;
5. updates visits and works set-based, bulk-inserts the chained events, and writes one pending
   accrual recompute row per affected access.

No event without its change and no change without its event: both happen in one transaction.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from django.db import connection

from ledger import chain, conf, host
from ledger.errors import ConflictError
from ledger.host import CompletedWork, OpportunityAccess, UserVisit
from ledger.models import AccrualRecompute, CorrectionBatch, CorrectionEvent, EntityKind
from ledger.schema import Conflict
from ledger.sql import CHUNK, insert_rows, table

LEDGER_LOCK = (0x4C454447, 1)  # "LEDG": serialises every ledger write
FEW_GROUPS = 20  # up to this many (status, stamp) groups, update each by id list


class Flip(NamedTuple):
    entity_kind: str
    entity_id: int
    completed_work_id: int | None
    opportunity_id: int
    access_id: int | None
    xform_id: str | None
    from_status: str
    to_status: str
    inverts_id: int | None = None
    # For undo: the status_modified_date to restore; None means "now".
    restore_status_modified_date: datetime.datetime | None = None


@dataclass
class Projection:
    events: int = 0
    visits: int = 0
    works: int = 0
    access_ids: list[int] = field(default_factory=list)
    skipped: list[Conflict] = field(default_factory=list)


def _lock_rows(model, ids: list[int]) -> dict[int, tuple[str, datetime.datetime | None]]:
    found: dict[int, tuple[str, datetime.datetime | None]] = {}
    with connection.cursor() as cursor:
        for start in range(0, len(ids), CHUNK):
            cursor.execute(
                f"""SELECT id, status, status_modified_date FROM {table(model)}
                    WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE""",
                [ids[start : start + CHUNK]],
            )
            for pk, status, modified in cursor.fetchall():
                found[pk] = (status, modified)
    return found


def _unit(flip: Flip) -> tuple[str, int]:
    if flip.completed_work_id is not None:
        return ("work", flip.completed_work_id)
    return (flip.entity_kind, flip.entity_id)


def _find_conflicts(flips: Sequence[Flip], current: dict) -> list[Conflict]:
    conflicts = []
    for f in flips:
        found = current.get((f.entity_kind, f.entity_id))
        status = found[0] if found else None
        if status != f.from_status:
            conflicts.append(
                Conflict(
                    entity_kind=f.entity_kind,
                    entity_id=f.entity_id,
                    completed_work_id=f.completed_work_id,
                    expected_status=f.from_status,
                    found_status=status,
                )
            )
    return conflicts


def _update(model, rows: list[tuple[int, str, datetime.datetime | None]]) -> None:
    """Set status and status_modified_date of (id, status, stamp) rows.

    An apply gives every row one status and one stamp, and an undo often restores only a few
    distinct stamps: each such group is one ``WHERE id = ANY(…)``. Otherwise the per-row values
    are joined from arrays.
    """
    if not rows:
        return
    groups: dict[tuple[str, datetime.datetime | None], list[int]] = {}
    for pk, status, stamp in rows:
        groups.setdefault((status, stamp), []).append(pk)
        if len(groups) > FEW_GROUPS:
            break
    with connection.cursor() as cursor:
        if len(groups) <= FEW_GROUPS:
            groups = {}
            for pk, status, stamp in rows:
                groups.setdefault((status, stamp), []).append(pk)
            for (status, stamp), ids in groups.items():
                cursor.execute(
                    f"""UPDATE {table(model)} SET status = %s, status_modified_date = %s
                        WHERE id = ANY(%s::bigint[])""",
                    [status, stamp, ids],
                )
            return
        ids, statuses, stamps = (list(col) for col in zip(*rows, strict=True))
        cursor.execute(
            f"""UPDATE {table(model)} t
                SET status = u.status, status_modified_date = u.modified
                FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[])
                     AS u(id, status, modified)
                WHERE t.id = u.id""",
            [ids, statuses, stamps],
        )


# The hashed content, in chain order, then the two hashes.
_EVENT_COLUMNS = (*chain.CONTENT_FIELDS, "prev_hash", "hash")


def _last_hash() -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT hash FROM {table(CorrectionEvent)} ORDER BY id DESC LIMIT 1")
        row = cursor.fetchone()
    return row[0] if row else chain.GENESIS


def _write_recomputes(
    batch: CorrectionBatch, access_ids: list[int], projected: dict[int, int]
) -> None:
    if not access_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table(AccrualRecompute)}
                    (batch_id, access_id, opportunity_id, state, accrual_before,
                     projected_after, created_at)
                SELECT %s, a.id, a.opportunity_id, 'pending', a.payment_accrued,
                       p.projected, now()
                FROM {table(OpportunityAccess)} a
                LEFT JOIN unnest(%s::bigint[], %s::bigint[]) AS p(id, projected)
                       ON p.id = a.id
                WHERE a.id = ANY(%s)
                ORDER BY a.id""",
            [
                batch.pk,
                list(projected),
                list(projected.values()),
                access_ids,
            ],
        )


def project(
    batch: CorrectionBatch,
    flips: Sequence[Flip],
    *,
    reason: str,
    skip_conflicts: bool,
    projected_accruals: dict[int, int] | None = None,
    releases: list[Callable[[], None]],
) -> Projection:
    """Apply ``flips`` as events of ``batch``; call inside ``transaction.atomic()``.

    Locks that outlive the transaction (the host's accrual locks in Redis) are handed back
    through ``releases``: the caller calls each once its transaction has ended, whether it
    committed or rolled back.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", LEDGER_LOCK)

    result = Projection()
    access_ids = sorted({f.access_id for f in flips if f.access_id is not None})
    lock = host.access_lock()
    if lock is not None and access_ids:
        releases.append(lock(access_ids, conf.get("ACCESS_LOCK_WAIT")))

    work_ids = sorted({f.entity_id for f in flips if f.entity_kind == EntityKind.completed_work})
    visit_ids = sorted({f.entity_id for f in flips if f.entity_kind == EntityKind.visit})
    current = {
        (EntityKind.completed_work.value, pk): v
        for pk, v in _lock_rows(CompletedWork, work_ids).items()
    }
    current.update(
        {(EntityKind.visit.value, pk): v for pk, v in _lock_rows(UserVisit, visit_ids).items()}
    )

    conflicts = _find_conflicts(flips, current)
    if conflicts:
        if not skip_conflicts:
            raise ConflictError(
                f"{len(conflicts)} entities no longer have the status the batch expects", conflicts
            )
        bad_units = {
            ("work", c.completed_work_id) if c.completed_work_id is not None
            else (c.entity_kind, c.entity_id)
            for c in conflicts
        }  # fmt: skip
        result.skipped = conflicts
        flips = [f for f in flips if _unit(f) not in bad_units]

    # Flip and record a chunk at a time: memory stays bounded by the chunk, not the batch.
    now = datetime.datetime.now(datetime.UTC)
    prev = _last_hash()
    visit_kind = EntityKind.visit.value
    batch_id = str(batch.pk)
    for start in range(0, len(flips), CHUNK):
        part = flips[start : start + CHUNK]
        stamps = [f.restore_status_modified_date if f.inverts_id is not None else now for f in part]
        flipped = [
            (f.entity_kind, (f.entity_id, f.to_status, s))
            for f, s in zip(part, stamps, strict=True)
        ]
        _update(UserVisit, [row for kind, row in flipped if kind == visit_kind])
        _update(CompletedWork, [row for kind, row in flipped if kind != visit_kind])
        events = []
        for f, stamp in zip(part, stamps, strict=True):
            values = (
                batch_id, f.entity_kind, f.entity_id, f.completed_work_id, f.opportunity_id,
                f.access_id, f.xform_id, f.from_status, f.to_status, reason, f.inverts_id,
                current[(f.entity_kind, f.entity_id)][1], stamp, now,
            )  # fmt: skip
            prev_hash, prev = prev, chain.hash_values(prev, values)
            events.append((*values, prev_hash, prev))
        insert_rows(CorrectionEvent, _EVENT_COLUMNS, events)
        result.events += len(part)
        result.visits += sum(1 for kind, _ in flipped if kind == visit_kind)
    result.works = result.events - result.visits
    touched = sorted({f.access_id for f in flips if f.access_id is not None})
    _write_recomputes(batch, touched, projected_accruals or {})

    result.access_ids = touched
    return result
