"""The raw-SQL floor: what the database alone needs for each job, with no ledger around it.

One hand-written statement plans the over-cap correction; one bare ``UPDATE`` per table flips
(or restores) the batch's rows, with no events, locks taken ahead, checks or history.
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


def flip(ids: dict[str, list[int]], status: str) -> int:
    """One UPDATE per table: every listed row to ``status``, stamped now; one transaction."""
    count = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for kind, table in _TABLES.items():
            cursor.execute(
                f"UPDATE {table} SET status = %s, status_modified_date = now() "
                f"WHERE id = ANY(%s::bigint[])",
                [status, ids[kind]],
            )
            count += cursor.rowcount
    return count


def restore(rows: dict[str, tuple[list[int], list[str], list[datetime.datetime]]]) -> int:
    """One UPDATE per table putting back each row's own status and status_modified_date."""
    count = 0
    with transaction.atomic(), connection.cursor() as cursor:
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
