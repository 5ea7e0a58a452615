"""The benchmark's data beyond ``seed_synthetic``: the batch to flip and a long event history.

* The batch: whole accesses, picked at random (seeded) until about a tenth of all visits are
  covered, with every visit and completed work of theirs that a flip to over_limit would touch.
  It is recorded with each row's status and ``status_modified_date`` in ``bench_batch_rows``
  (and each access's accrual in ``bench_accesses``) so every step can check that the state it
  started from was restored.
* The history: pairs of batches — a visit-list batch flipping works and their visits to
  over_limit, and its undo flipping them back — written straight into the ledger's tables with
  ``COPY``, chained with the ledger's own hash function, consistent with the host rows (each
  entity ends where it started), so ``verify`` finds nothing to report.
"""

from __future__ import annotations

import datetime
import random
import uuid
from collections.abc import Iterator

from django.db import connection, transaction

from ledger import chain, entries
from ledger.models import BatchState, CorrectionBatch, CorrectionEvent, PlannedChange, Planner
from ledger.people import Actor
from ledger.planners.rows import PlannedRow, plan_digest
from ledger.sql import db_now, insert_rows

HISTORY_REASON = "Synthetic history for the benchmarks"
HISTORY_OPERATOR = "benchmarks"
HISTORY_REVIEWER = "benchmarks-review"
HISTORY_START = datetime.datetime(2026, 5, 1, tzinfo=datetime.UTC)
HISTORY_WORKS_PER_BATCH = 10_000

SNAPSHOT_DDL = """
DROP TABLE IF EXISTS bench_batch_rows;
DROP TABLE IF EXISTS bench_accesses;
CREATE TABLE bench_batch_rows (
    kind text NOT NULL,
    id bigint NOT NULL,
    access_id bigint NOT NULL,
    status text NOT NULL,
    status_modified_date timestamptz,
    PRIMARY KEY (kind, id)
);
CREATE TABLE bench_accesses (
    access_id bigint PRIMARY KEY,
    payment_accrued bigint NOT NULL,
    works integer NOT NULL
);
"""


def _one(sql: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def choose_batch(seed: int, share: float = 0.1) -> dict:
    """Pick whole accesses until ``share`` of all visits is covered; snapshot their rows."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT opportunity_access_id, count(*) FROM opportunity_uservisit "
            "WHERE opportunity_access_id IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
        per_access = cursor.fetchall()
    total = sum(n for _, n in per_access)
    target = max(1, round(total * share))
    rng = random.Random(seed)
    rng.shuffle(per_access)
    chosen, covered = [], 0
    for access_id, n in per_access:
        if covered >= target:
            break
        chosen.append(access_id)
        covered += n
    chosen.sort()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SNAPSHOT_DDL)
        cursor.execute(
            """INSERT INTO bench_batch_rows
               SELECT 'visit', v.id, v.opportunity_access_id, v.status, v.status_modified_date
               FROM opportunity_uservisit v
               WHERE v.opportunity_access_id = ANY(%s)
                 AND v.status NOT IN ('over_limit', 'trial')""",
            [chosen],
        )
        cursor.execute(
            """INSERT INTO bench_batch_rows
               SELECT 'completed_work', w.id, w.opportunity_access_id, w.status,
                      w.status_modified_date
               FROM opportunity_completedwork w
               WHERE w.id IN (SELECT v.completed_work_id FROM opportunity_uservisit v
                              JOIN bench_batch_rows b ON b.kind = 'visit' AND b.id = v.id)
                 AND w.status <> 'over_limit'"""
        )
        cursor.execute(
            """INSERT INTO bench_accesses
               SELECT a.id, a.payment_accrued,
                      (SELECT count(*) FROM opportunity_completedwork w
                       WHERE w.opportunity_access_id = a.id)
               FROM opportunity_opportunityaccess a WHERE a.id = ANY(%s)""",
            [chosen],
        )
        cursor.execute("ANALYZE bench_batch_rows")
        cursor.execute("ANALYZE bench_accesses")
    return batch_counts()


def batch_counts() -> dict:
    visits, works = _one(
        "SELECT count(*) FILTER (WHERE kind = 'visit'), "
        "count(*) FILTER (WHERE kind = 'completed_work') FROM bench_batch_rows"
    )
    accesses, min_works, max_works = _one(
        "SELECT count(*), min(works), max(works) FROM bench_accesses"
    )
    return {
        "visits": visits,
        "works": works,
        "accesses": accesses,
        "min_works_per_access": min_works,
        "max_works_per_access": max_works,
    }


def batch_ids() -> dict[str, list[int]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT kind, id FROM bench_batch_rows ORDER BY kind, id")
        ids: dict[str, list[int]] = {"visit": [], "completed_work": []}
        for kind, pk in cursor.fetchall():
            ids[kind].append(pk)
    return ids


def batch_visit_ids() -> list[int]:
    """The batch's visit ids, as a list of ints and nothing else: the visit-list plan's input,
    read as the command line would hold it (a list of 500,000 row tuples read only to keep
    one column would weigh more than the plan being measured)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(array_agg(id ORDER BY id), '{}') FROM bench_batch_rows "
            "WHERE kind = 'visit'"
        )
        return cursor.fetchone()[0]


def batch_rows() -> dict[str, tuple[list[int], list[str], list[datetime.datetime]]]:
    """Per kind: ids, snapshot statuses and stamps (what every step must leave in place)."""
    rows: dict[str, tuple[list, list, list]] = {
        "visit": ([], [], []),
        "completed_work": ([], [], []),
    }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT kind, id, status, status_modified_date FROM bench_batch_rows ORDER BY kind, id"
        )
        for kind, pk, status, modified in cursor.fetchall():
            ids, statuses, stamps = rows[kind]
            ids.append(pk)
            statuses.append(status)
            stamps.append(modified)
    return rows


def batch_access_ids() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT access_id FROM bench_accesses ORDER BY access_id")
        return [r[0] for r in cursor.fetchall()]


def drift() -> dict:
    """How many batch rows and accesses differ from the snapshot (all zero when restored)."""
    visits, works = _one(
        """SELECT
             (SELECT count(*) FROM bench_batch_rows b JOIN opportunity_uservisit v ON v.id = b.id
              WHERE b.kind = 'visit' AND (v.status, v.status_modified_date)
                    IS DISTINCT FROM (b.status, b.status_modified_date)),
             (SELECT count(*) FROM bench_batch_rows b
              JOIN opportunity_completedwork w ON w.id = b.id
              WHERE b.kind = 'completed_work' AND (w.status, w.status_modified_date)
                    IS DISTINCT FROM (b.status, b.status_modified_date))"""
    )
    (accesses,) = _one(
        """SELECT count(*) FROM bench_accesses s
           JOIN opportunity_opportunityaccess a ON a.id = s.access_id
           WHERE a.payment_accrued <> s.payment_accrued"""
    )
    return {"visits": visits, "works": works, "accesses": accesses}


# -- synthetic history ------------------------------------------------------------------------


def _history_groups(works_per_batch: int) -> Iterator[list[tuple]]:
    """Works in id order with their flippable visits, ``works_per_batch`` works at a time."""
    (last,) = _one("SELECT COALESCE(max(id), 0) FROM opportunity_completedwork")
    start = 0
    while start <= last:
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT w.id, a.opportunity_id, w.opportunity_access_id, w.status,
                          w.status_modified_date
                   FROM opportunity_completedwork w
                   JOIN opportunity_opportunityaccess a ON a.id = w.opportunity_access_id
                   WHERE w.id > %s AND w.status NOT IN ('over_limit')
                   ORDER BY w.id LIMIT %s""",
                [start, works_per_batch],
            )
            works = cursor.fetchall()
            if not works:
                return
            ids = [w[0] for w in works]
            cursor.execute(
                """SELECT v.completed_work_id, v.id, v.xform_id, v.status, v.status_modified_date
                   FROM opportunity_uservisit v
                   WHERE v.completed_work_id = ANY(%s)
                     AND v.status NOT IN ('over_limit', 'trial')
                   ORDER BY v.id""",
                [ids],
            )
            visits: dict[int, list[tuple]] = {}
            for row in cursor.fetchall():
                visits.setdefault(row[0], []).append(row)
        group = []
        for work_id, opp_id, access_id, status, modified in works:
            group.append(("completed_work", work_id, work_id, opp_id, access_id, None, status,
                          modified))  # fmt: skip
            for _, visit_id, xform_id, v_status, v_modified in visits.get(work_id, []):
                group.append(("visit", visit_id, work_id, opp_id, access_id, xform_id, v_status,
                              v_modified))  # fmt: skip
        yield group
        start = ids[-1]


def _raw(cursor):
    raw = cursor.cursor if hasattr(cursor, "cursor") else cursor
    if not hasattr(raw, "copy"):
        raise RuntimeError("the synthetic history needs psycopg 3 (cursor.copy)")
    return raw


# The synthetic history is written as the ledger writes it today (hash format 3, the id
# hashed), each batch with its lifecycle entries, so verify holds it to every rule.
_COLUMNS = (*chain.CONTENT_FIELDS, "hash_format", "prev_hash", "hash")


def _people() -> tuple[Actor, Actor]:
    """The history's operator and its reviewer (a second person approves each batch)."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    found = []
    for name in (HISTORY_OPERATOR, HISTORY_REVIEWER):
        user = User.objects.filter(username=name).first()
        if user is None:
            user = User.objects.create_superuser(username=name, email=None, password=None)
        found.append(Actor(username=name, user_id=user.pk))
    return found[0], found[1]


def _approve(batch: CorrectionBatch, reviewer: Actor) -> None:
    batch.approved_by, batch.approved_at = reviewer.username, db_now()
    batch.save(update_fields=["approved_by", "approved_at"])
    entries.record(batch, "approve", reviewer, {"plan_digest": batch.plan_digest},
                   at=batch.approved_at)  # fmt: skip


def _applied(batch: CorrectionBatch, operator: Actor, at, events: int, last: tuple) -> None:
    batch.state, batch.applied_by, batch.applied_at = BatchState.applied, operator.username, at
    batch.save(update_fields=["state", "applied_by", "applied_at"])
    entries.record(
        batch, "apply", operator,
        {"events": events, "last_event_id": last[0], "last_event_hash": last[1], "skipped": 0,
         "skipped_sha256": entries.digest([])},
        at=at,
    )  # fmt: skip


def _write_events(events: list[dict], prev: str, next_id: int) -> tuple[str, int]:
    with (
        connection.cursor() as cursor,
        _raw(cursor).copy(
            f"COPY {CorrectionEvent._meta.db_table} ({', '.join(_COLUMNS)}) FROM STDIN"
        ) as copy,
    ):
        for event in events:
            event.update(id=next_id, prev_hash=prev, hash_format=chain.CURRENT_FORMAT)
            event["hash"] = prev = chain.event_hash(prev, event)
            copy.write_row([event[c] for c in _COLUMNS])
            next_id += 1
    return prev, next_id


def _recomputes(batch: CorrectionBatch, at, access_ids: list[int]) -> None:
    """One recompute row per access, pending then done, as the recompute leaves them."""
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO ledger_accrualrecompute
                   (batch_id, access_id, opportunity_id, state, accrual_before, projected_after,
                    created_at)
               SELECT %s, a.id, a.opportunity_id, 'pending', a.payment_accrued,
                      a.payment_accrued, %s
               FROM opportunity_opportunityaccess a WHERE a.id = ANY(%s) ORDER BY a.id""",
            [batch.pk, at, access_ids],
        )
        cursor.execute(
            """UPDATE ledger_accrualrecompute
               SET state = 'done', accrual_after = accrual_before, done_at = %s
               WHERE batch_id = %s""",
            [at, batch.pk],
        )


def write_history(target_events: int, works_per_batch: int = HISTORY_WORKS_PER_BATCH) -> dict:
    """Append about ``target_events`` chained events (apply and undo pairs) with COPY.

    The ledger's last event must precede :data:`HISTORY_START` (the database refuses events
    recorded before the one they follow): write the history into a fresh ledger.
    """
    if target_events <= 0:
        return {"events": 0, "batches": 0}
    operator, reviewer = _people()
    written = batches = 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(max(id), 0) FROM {CorrectionEvent._meta.db_table}")
        next_id = cursor.fetchone()[0] + 1
        cursor.execute(
            f"SELECT hash FROM {CorrectionEvent._meta.db_table} ORDER BY id DESC LIMIT 1"
        )
        row = cursor.fetchone()
    prev = row[0] if row else chain.GENESIS
    for number, group in enumerate(_history_groups(works_per_batch)):
        group = group[: max(1, (target_events - written) // 2)]
        applied_at = HISTORY_START + datetime.timedelta(hours=2 * number)
        undone_at = applied_at + datetime.timedelta(hours=1)
        digest = plan_digest(
            PlannedRow(k, e, w, o, a, x, s, "over_limit", "", False)
            for k, e, w, o, a, x, s, _ in group
        )
        accesses = sorted({g[4] for g in group})
        with transaction.atomic():
            # Planned, approved, applied, then undone by an undo batch planned, approved and
            # applied in turn — the path a real batch takes, with its lifecycle entries.
            original = CorrectionBatch.objects.create(
                id=uuid.uuid4(), planner=Planner.visit_list, reason=HISTORY_REASON,
                planned_by=operator.username, plan_digest=digest, scope={"synthetic": True},
            )  # fmt: skip
            insert_rows(
                PlannedChange,
                ("batch_id", *PlannedRow._fields),
                ((original.pk, *PlannedRow(k, e, w, o, a, x, st, "over_limit", "", False))
                 for k, e, w, o, a, x, st, _ in group),
            )  # fmt: skip
            entries.record(original, "plan", operator, entries.plan_details(original))
            _approve(original, reviewer)
            first_id = next_id
            prev, next_id = _write_events(
                [
                    {"batch_id": str(original.pk), "entity_kind": kind, "entity_id": entity,
                     "completed_work_id": work, "opportunity_id": opp, "access_id": access,
                     "xform_id": xform, "from_status": status, "to_status": "over_limit",
                     "reason": HISTORY_REASON, "inverts_id": None,
                     "prior_status_modified_date": modified,
                     "new_status_modified_date": applied_at, "recorded_at": applied_at,
                     "prev_event_id": None, "members": None}
                    for kind, entity, work, opp, access, xform, status, modified in group
                ],
                prev,
                next_id,
            )  # fmt: skip
            _applied(original, operator, applied_at, len(group), (next_id - 1, prev))
            _recomputes(original, applied_at, accesses)
            undo = CorrectionBatch.objects.create(
                id=uuid.uuid4(), planner=Planner.undo, reason=HISTORY_REASON,
                planned_by=operator.username, plan_digest=digest,
                scope={"reverts": str(original.pk)}, reverts=original,
            )  # fmt: skip
            entries.record(undo, "plan", operator, entries.plan_details(undo))
            _approve(undo, reviewer)
            # The undo inverts the original's events newest first, as undo_batch does; each
            # names the event it inverts as its entity's previous one.
            prev, next_id = _write_events(
                [
                    {"batch_id": str(undo.pk), "entity_kind": kind, "entity_id": entity,
                     "completed_work_id": work, "opportunity_id": opp, "access_id": access,
                     "xform_id": xform, "from_status": "over_limit", "to_status": status,
                     "reason": HISTORY_REASON, "inverts_id": first_id + offset,
                     "prior_status_modified_date": applied_at,
                     "new_status_modified_date": modified, "recorded_at": undone_at,
                     "prev_event_id": first_id + offset, "members": None}
                    for offset, (kind, entity, work, opp, access, xform, status, modified)
                    in zip(range(len(group) - 1, -1, -1), reversed(group), strict=True)
                ],
                prev,
                next_id,
            )  # fmt: skip
            _applied(undo, operator, undone_at, len(group), (next_id - 1, prev))
            _recomputes(undo, undone_at, accesses)
            original.state, original.undone_at = BatchState.undone, undone_at
            original.save(update_fields=["state", "undone_at"])
            entries.record(
                original, "undo", operator,
                {"by_batch": str(undo.pk), "events": len(group), "state": BatchState.undone},
                at=undone_at,
            )  # fmt: skip
        written += 2 * len(group)
        batches += 2
        if written >= target_events:
            break
    with connection.cursor() as cursor:
        table = CorrectionEvent._meta.db_table
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        )
        # The chain head moves to the history's last event, as the projector would move it.
        cursor.execute(
            f"""UPDATE ledger_ledgerhead SET event_id = %s, event_hash = %s,
                    events = (SELECT count(*) FROM {table}) WHERE id = 1""",
            [next_id - 1, prev],
        )
        cursor.execute(f"ANALYZE {table}")
        cursor.execute("ANALYZE ledger_accrualrecompute")
        cursor.execute("ANALYZE ledger_correctionbatch")
    return {"events": written, "batches": batches}
