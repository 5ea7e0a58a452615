"""``plans``: every batch's digest recomputes from its planned changes, and each applied
batch's events are its planned changes, less its recorded skips.

An undo batch applied in one step has no planned changes (its events are held to the batch it
reverts by ``batches`` and ``continuity``); one that was planned is held to its plan like any
other batch."""

from __future__ import annotations

from ledger import digests
from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables

# Batches held to a plan: every batch but an undo applied in one step (no planned changes).
_PLANNED = """(b.planner <> 'undo' OR EXISTS (SELECT 1 FROM {planned} x WHERE x.batch_id = b.id))"""


def check_plans() -> Result:
    """Each batch's digest, then each applied batch's events against its planned changes and
    its recorded skips."""
    t = tables()
    total, problems = digest_problems()
    more, found = plan_event_problems()
    checked = scalar(
        f"SELECT count(*) FROM {t['batch']} b WHERE {_PLANNED.format(planned=t['planned'])}"
    )
    return checked, total + more, (problems + found)[:MAX_PROBLEMS_PER_CHECK], ""


def plan_event_problems(batch_ids: list[str] | None = None) -> tuple[int, list[Problem]]:
    """Each applied batch held to a plan (of ``batch_ids``, or all): its events are exactly
    its planned changes, less the units it recorded as skipped."""
    t = tables()
    held = _PLANNED.format(planned=t["planned"])
    where, params = ("AND b.id = ANY(%s::uuid[])", [batch_ids]) if batch_ids else ("", [])
    rows = fetchall(
        f"""
        WITH applied AS (
            SELECT b.id, b.skipped_conflicts FROM {t["batch"]} b
            WHERE {held} AND b.state IN ('applied', 'partially_undone', 'undone') {where}
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
        -- One join matches both ways: a planned change with no event, an event with no plan.
        unmatched AS (
            SELECT p.batch_id AS p_batch, p.entity_kind AS p_kind, p.entity_id AS p_entity,
                   p.completed_work_id, d.batch_id AS d_batch, d.entity_kind AS d_kind,
                   d.entity_id AS d_entity
            FROM planned p FULL JOIN done d
              ON d.batch_id = p.batch_id AND d.entity_kind = p.entity_kind
             AND d.entity_id = p.entity_id AND d.from_status = p.from_status
             AND d.to_status = p.to_status
            WHERE p.batch_id IS NULL OR d.batch_id IS NULL
        ),
        missing AS (
            SELECT u.p_batch AS batch_id, u.p_kind AS entity_kind, u.p_entity AS entity_id,
                   'planned, no event' AS what
            FROM unmatched u
            WHERE u.d_batch IS NULL
              AND NOT EXISTS (
                SELECT 1 FROM skipped s WHERE s.batch_id = u.p_batch
                  AND ((u.completed_work_id IS NOT NULL AND s.kind = 'completed_work'
                        AND s.unit = u.completed_work_id)
                       OR (u.completed_work_id IS NULL AND s.kind = u.p_kind
                           AND s.unit = u.p_entity)))
        ),
        extra AS (
            SELECT u.d_batch, u.d_kind, u.d_entity, 'event, not planned' AS what
            FROM unmatched u WHERE u.p_batch IS NULL
        )
        SELECT *, count(*) OVER () FROM (SELECT * FROM missing UNION ALL SELECT * FROM extra) x
        ORDER BY batch_id, entity_kind, entity_id LIMIT %s
        """,
        [*params, MAX_PROBLEMS_PER_CHECK],
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
    return (rows[0][4] if rows else 0), problems


def digest_problems(batch_ids: list[str] | None = None) -> tuple[int, list[Problem]]:
    """Every batch held to a plan (of ``batch_ids``, or all): its ``plan_digest`` recomputed
    in the database from its planned changes, in the format the batch records.

    Each planned change's text is built in a subquery that PostgreSQL cannot fold into the
    aggregate (``OFFSET 0``) and that is sorted in the aggregate's order, so parallel workers
    build and sort the texts and the ordered ``string_agg`` only concatenates them. Built
    inside the aggregate, every text was made by the one process running it."""
    t = tables()
    lines = digests.sql_digest_lines("p")
    ids = [batch_ids] if batch_ids else []
    wanted = "AND p.batch_id = ANY(%s::uuid[])" if batch_ids else ""
    where = "AND b.id = ANY(%s::uuid[])" if batch_ids else ""
    rows = fetchall(
        f"""
        WITH texts AS (
            SELECT x.batch_id, count(*) AS changes,
                   string_agg(x.line, '' ORDER BY {digests.sql_order("x")}) AS body
            FROM (
                SELECT p.batch_id, p.entity_kind, p.entity_id, p.id,
                       CASE f.digest_format WHEN 1 THEN {lines[1]} ELSE {lines[2]} END AS line
                FROM {t["planned"]} p JOIN {t["batch"]} f ON f.id = p.batch_id
                WHERE TRUE {wanted}
                ORDER BY p.batch_id, {digests.sql_order("p")}
                OFFSET 0
            ) x
            GROUP BY x.batch_id
        )
        SELECT id, digest_format, plan_digest, computed, changes, count(*) OVER ()
        FROM (
            SELECT b.id, b.digest_format, b.plan_digest, b.created_at,
                   COALESCE(x.changes, 0) AS changes,
                   encode(sha256(convert_to(
                       CASE b.digest_format WHEN 1 THEN {digests.sql_prefix(1)}
                                            WHEN 2 THEN {digests.sql_prefix(2)} END
                       || COALESCE(x.body, ''), 'UTF8')), 'hex') AS computed
            FROM {t["batch"]} b LEFT JOIN texts x ON x.batch_id = b.id
            WHERE {_PLANNED.format(planned=t["planned"])} {where}
        ) s
        WHERE computed IS DISTINCT FROM plan_digest
        ORDER BY created_at, id LIMIT %s
        """,
        [*ids, *ids, MAX_PROBLEMS_PER_CHECK],
    )
    problems = [
        Problem(
            check="plans",
            batch=str(batch),
            message=(
                f"batch {batch}: plan digest format {fmt} is unknown"
                if fmt not in digests.FORMATS
                else f"batch {batch}: its {changes} planned changes do not give its plan digest "
                "(altered since it was planned)"
            ),
            expected=stored,
            found=computed,
        )
        for batch, fmt, stored, computed, changes, _ in rows
    ]
    return (rows[0][5] if rows else 0), problems
