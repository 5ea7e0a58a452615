"""``drift``: every corrected entity's host status is its last event's ``to_status``."""

from __future__ import annotations

from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables


def check_drift() -> Result:
    t = tables()
    sql = f"""
        WITH last AS (
            SELECT DISTINCT ON (e.entity_kind, e.entity_id)
                   e.entity_kind, e.entity_id, e.id, e.to_status
            FROM {t["event"]} e
            ORDER BY e.entity_kind DESC, e.entity_id DESC, e.id DESC
        ),
        drift AS (
            SELECT l.entity_kind, l.entity_id, l.id, l.to_status, h.status, h.id IS NULL AS gone
            FROM last l LEFT JOIN {t["visit"]} h ON h.id = l.entity_id
            WHERE l.entity_kind = 'visit'
              AND (h.id IS NULL OR h.status IS DISTINCT FROM l.to_status)
            UNION ALL
            SELECT l.entity_kind, l.entity_id, l.id, l.to_status, h.status, h.id IS NULL
            FROM last l LEFT JOIN {t["work"]} h ON h.id = l.entity_id
            WHERE l.entity_kind = 'completed_work'
              AND (h.id IS NULL OR h.status IS DISTINCT FROM l.to_status)
            UNION ALL
            SELECT l.entity_kind, l.entity_id, l.id, l.to_status, NULL, false
            FROM last l
            WHERE l.entity_kind NOT IN ('visit', 'completed_work')
        )
        SELECT *, count(*) OVER (), (SELECT count(*) FROM last)
        FROM drift ORDER BY entity_kind, entity_id LIMIT %s
    """
    rows = fetchall(sql, [MAX_PROBLEMS_PER_CHECK])
    problems = []
    for kind, entity_id, event_id, expected, found, gone, _, _ in rows:
        if kind not in ("visit", "completed_work"):
            message = f"event {event_id} names an unknown entity kind {kind!r}"
        elif gone:
            message = f"{kind} {entity_id}: host row is gone (last event {event_id})"
        else:
            message = (
                f"{kind} {entity_id}: host status {found!r}, last event {event_id} set {expected!r}"
            )
        problems.append(
            Problem(
                check="drift",
                message=message,
                entity_kind=kind,
                entity_id=entity_id,
                event_id=event_id,
                expected=expected,
                found=found,
            )
        )
    if rows:
        total, checked = rows[0][6], rows[0][7]
    else:
        total, checked = (
            0,
            scalar(
                f"SELECT count(*) FROM (SELECT DISTINCT entity_kind, entity_id FROM {t['event']}) s"
            ),
        )
    return checked, total, problems, ""
