"""The raw-SQL floor: what the database alone needs for each job, with no ledger around it.

One hand-written statement plans the over-cap correction. Flipping (or restoring) the batch is
one bare ``UPDATE`` per table plus a ``COPY`` of one event row per flipped row into a table of
the events' shape, with their indexes and as many rows as the ledger holds — the writes a
correction cannot do without — and nothing else: no locks taken ahead, no compare-and-set, no
hash chain, no guards or foreign keys, no plan.
"""

from __future__ import annotations

import datetime

from django.db import connection, transaction

PLAN_SQL = """
WITH ranked AS (
    SELECT w.id, cl.max_visits,
           row_number() OVER (
               PARTITION BY w.opportunity_access_id, w.payment_unit_id
               ORDER BY w.date_created, w.id
           ) AS position
    FROM opportunity_completedwork w
    JOIN opportunity_opportunityclaim c ON c.opportunity_access_id = w.opportunity_access_id
    JOIN opportunity_opportunityclaimlimit cl
      ON cl.opportunity_claim_id = c.id AND cl.payment_unit_id = w.payment_unit_id
    WHERE w.status <> 'over_limit'
)
SELECT r.id, v.id
FROM ranked r
LEFT JOIN opportunity_uservisit v
  ON v.completed_work_id = r.id AND v.status NOT IN ('over_limit', 'trial', 'rejected')
WHERE r.position > r.max_visits
"""


def plan() -> tuple[list[int], list[int]]:
    """Over-cap works and their flippable visits, every opportunity, one statement."""
    with connection.cursor() as cursor:
        cursor.execute(PLAN_SQL)
        rows = cursor.fetchall()
    works = sorted({w for w, _ in rows})
    visits = sorted(v for _, v in rows if v is not None)
    return works, visits


_TABLES = {"visit": "opportunity_uservisit", "completed_work": "opportunity_completedwork"}


FLOOR_EVENTS = "bench_floor_events"
EVENTS = "ledger_correctionevent"
_FLOOR_BATCH = "00000000-0000-0000-0000-00000000f100"
_EVENT_COLUMNS = (
    "id", "batch_id", "entity_kind", "entity_id", "completed_work_id", "opportunity_id",
    "access_id", "xform_id", "from_status", "to_status", "reason", "prior_status_modified_date",
    "new_status_modified_date", "recorded_at", "hash_format", "prev_hash", "hash",
)  # fmt: skip
# Each flipped row with what its event records: (id, work, opportunity, access, xform, status,
# stamp).
_ROWS = {
    "visit": """SELECT id, completed_work_id, opportunity_id, opportunity_access_id, xform_id,
                       status, status_modified_date
                FROM opportunity_uservisit WHERE id = ANY(%s::bigint[])""",
    "completed_work": """SELECT w.id, w.id, a.opportunity_id, w.opportunity_access_id, NULL,
                                w.status, w.status_modified_date
                         FROM opportunity_completedwork w
                         JOIN opportunity_opportunityaccess a ON a.id = w.opportunity_access_id
                         WHERE w.id = ANY(%s::bigint[])""",
}


def prepare_events() -> None:
    """Not timed: the floor's events table — the ledger's columns and indexes, none of its
    triggers or foreign keys — holding the ledger's events, and none of an earlier floor's."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_EVENTS} (LIKE {EVENTS} INCLUDING INDEXES)"
        )
        cursor.execute(f"DELETE FROM {FLOOR_EVENTS} WHERE id < 0")
        cursor.execute(
            f"""INSERT INTO {FLOOR_EVENTS} SELECT * FROM {EVENTS}
                WHERE id > (SELECT COALESCE(max(id), 0) FROM {FLOOR_EVENTS})"""
        )
        if not connection.in_atomic_block:  # VACUUM runs outside transactions only
            cursor.execute(f"VACUUM ANALYZE {FLOOR_EVENTS}")


def _copy_events(cursor, targets: dict[str, dict[int, tuple[str, object]]], now) -> int:
    """COPY one event row per row about to change (read as it is now), ids below zero."""
    sql = f"COPY {FLOOR_EVENTS} ({', '.join(_EVENT_COLUMNS)}) FROM STDIN"
    next_id = -1
    raw = cursor.cursor
    rows = []
    for kind, wanted in targets.items():
        cursor.execute(_ROWS[kind], ["{" + ",".join(map(str, wanted)) + "}"])
        for pk, work, opp, access, xform, status, stamp in cursor.fetchall():
            to_status, new_stamp = wanted[pk]
            rows.append(
                (next_id, _FLOOR_BATCH, kind, pk, work, opp, access, xform, status, to_status,
                 "floor", stamp, new_stamp or now, now, 3, "0" * 64, "0" * 64)
            )  # fmt: skip
            next_id -= 1
    if hasattr(raw, "copy"):  # psycopg 3
        with raw.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    else:  # psycopg2
        import io

        from ledger.sql import _text

        buffer = io.StringIO("".join("\t".join(map(_text, r)) + "\n" for r in rows))
        raw.copy_expert(sql, buffer)
    return len(rows)


def flip(ids: dict[str, list[int]], status: str) -> int:
    """Every listed row to ``status``, stamped now: one event row each (COPY), one UPDATE per
    table; one transaction."""
    count = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        (now,) = cursor.fetchone()
        _copy_events(cursor, {k: dict.fromkeys(ids[k], (status, None)) for k in _TABLES}, now)
        for kind, table in _TABLES.items():
            cursor.execute(
                f"UPDATE {table} SET status = %s, status_modified_date = now() "
                f"WHERE id = ANY(%s::bigint[])",
                [status, ids[kind]],
            )
            count += cursor.rowcount
    return count


def restore(rows: dict[str, tuple[list[int], list[str], list[datetime.datetime]]]) -> int:
    """Each row's own status and status_modified_date put back: one event row each (COPY),
    one UPDATE per table; one transaction."""
    count = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        (now,) = cursor.fetchone()
        targets = {
            kind: {pk: (s, m) for pk, s, m in zip(*rows[kind], strict=True)} for kind in _TABLES
        }
        _copy_events(cursor, targets, now)
        for kind, table in _TABLES.items():
            ids, statuses, stamps = rows[kind]
            cursor.execute(
                f"""UPDATE {table} t SET status = u.status, status_modified_date = u.modified
                    FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[])
                         AS u(id, status, modified)
                    WHERE t.id = u.id""",
                [ids, statuses, stamps],
            )
            count += cursor.rowcount
    return count
