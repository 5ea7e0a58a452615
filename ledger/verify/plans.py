"""``plans``: each applied batch's events are its planned changes, less its recorded skips."""

from __future__ import annotations

from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables


def check_plans() -> Result:
    """Each applied batch's events against its planned changes and its recorded skips."""
    t = tables()
    rows = fetchall(
        f"""
        WITH applied AS (
            SELECT id, skipped_conflicts FROM {t["batch"]}
            WHERE planner <> 'undo' AND state IN ('applied', 'partially_undone', 'undone')
        ),
        skipped AS (
            SELECT a.id AS batch_id,
                   CASE WHEN c->>'completed_work_id' IS NOT NULL
                        THEN 'completed_work' ELSE c->>'entity_kind' END AS kind,
                   COALESCE((c->>'completed_work_id')::bigint, (c->>'entity_id')::bigint) AS unit
            FROM applied a
            CROSS JOIN LATERAL jsonb_array_elements(
                CASE WHEN jsonb_typeof(a.skipped_conflicts) = 'array'
                     THEN a.skipped_conflicts ELSE '[]'::jsonb END
            ) c
        ),
        planned AS (
            SELECT p.batch_id, p.entity_kind, p.entity_id, p.completed_work_id, p.from_status,
                   p.to_status
            FROM {t["planned"]} p JOIN applied a ON a.id = p.batch_id
            WHERE p.excluded = ''
        ),
        done AS (
            SELECT e.batch_id, e.entity_kind, e.entity_id, e.from_status, e.to_status
            FROM {t["event"]} e JOIN applied a ON a.id = e.batch_id
        ),
        missing AS (
            SELECT p.batch_id, p.entity_kind, p.entity_id, 'planned, no event' AS what
            FROM planned p
            WHERE NOT EXISTS (
                SELECT 1 FROM done d WHERE d.batch_id = p.batch_id
                  AND d.entity_kind = p.entity_kind AND d.entity_id = p.entity_id
                  AND d.from_status = p.from_status AND d.to_status = p.to_status)
              AND NOT EXISTS (
                SELECT 1 FROM skipped s WHERE s.batch_id = p.batch_id
                  AND ((p.completed_work_id IS NOT NULL AND s.kind = 'completed_work'
                        AND s.unit = p.completed_work_id)
                       OR (p.completed_work_id IS NULL AND s.kind = p.entity_kind
                           AND s.unit = p.entity_id)))
        ),
        extra AS (
            SELECT d.batch_id, d.entity_kind, d.entity_id, 'event, not planned' AS what
            FROM done d
            WHERE NOT EXISTS (
                SELECT 1 FROM planned p WHERE p.batch_id = d.batch_id
                  AND p.entity_kind = d.entity_kind AND p.entity_id = d.entity_id
                  AND p.from_status = d.from_status AND p.to_status = d.to_status)
        )
        SELECT *, count(*) OVER () FROM (SELECT * FROM missing UNION ALL SELECT * FROM extra) x
        ORDER BY batch_id, entity_kind, entity_id LIMIT %s
        """,
        [MAX_PROBLEMS_PER_CHECK],
    )
    problems = [
        Problem(
            check="plans",
            batch=str(batch),
            entity_kind=kind,
            entity_id=entity_id,
            message=(
                f"batch {batch}: {kind} {entity_id} was planned and not skipped, but has no event"
                if what == "planned, no event"
                else f"batch {batch}: event for {kind} {entity_id} that was never planned"
            ),
        )
        for batch, kind, entity_id, what, _ in rows
    ]
    checked = scalar(
        f"""SELECT count(*) FROM {t["batch"]}
            WHERE planner <> 'undo' AND state IN ('applied', 'partially_undone', 'undone')"""
    )
    return checked, (rows[0][4] if rows else 0), problems, ""
