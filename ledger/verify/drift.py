"""``drift``: every corrected entity's host status is its last event's ``to_status``."""

from __future__ import annotations

from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables


def check_drift() -> Result:
    t = tables()

    # Each kind's last events come from a scan of that kind alone, in entity order, so they
    # meet the host table's primary key in a merge join; one DISTINCT ON over every kind,
    # joined afterwards, misjudges the rows per kind and probes the host's key once per entity.
    def last_of(kind: str, host: str) -> str:
        return f"""
            SELECT l.entity_kind, l.entity_id, l.id, l.to_status, h.status, h.id IS NULL
            FROM (
                SELECT DISTINCT ON (e.entity_id) e.entity_kind, e.entity_id, e.id, e.to_status
                FROM {t["event"]} e WHERE e.entity_kind = '{kind}'
                ORDER BY e.entity_id, e.id DESC
            ) l LEFT JOIN {host} h ON h.id = l.entity_id
            WHERE h.id IS NULL OR h.status IS DISTINCT FROM l.to_status"""

    sql = f"""
        SELECT *, count(*) OVER () FROM (
            {last_of("visit", t["visit"])}
            UNION ALL
            {last_of("completed_work", t["work"])}
            UNION ALL
            (SELECT DISTINCT ON (e.entity_kind, e.entity_id)
                    e.entity_kind, e.entity_id, e.id, e.to_status, NULL, false
             FROM {t["event"]} e
             WHERE e.entity_kind NOT IN ('visit', 'completed_work')
             ORDER BY e.entity_kind, e.entity_id, e.id DESC)
        ) drift ORDER BY entity_kind, entity_id LIMIT %s
    """
    rows = fetchall(sql, [MAX_PROBLEMS_PER_CHECK])
    problems = []
    for kind, entity_id, event_id, expected, found, gone, _ in rows:
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
    # Counting the entities is a scan of the entity index alone.
    checked = scalar(
        f"SELECT count(*) FROM (SELECT DISTINCT entity_kind, entity_id FROM {t['event']}) s"
    )
    return checked, rows[0][6] if rows else 0, problems, ""
