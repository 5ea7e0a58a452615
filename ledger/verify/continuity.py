"""``continuity``: each entity's events follow one another; undo events mirror what they invert."""

from __future__ import annotations

from ledger.verify.common import (
    MAX_PROBLEMS_PER_CHECK,
    Problem,
    Result,
    event_count,
    fetchall,
    tables,
)


def check_continuity() -> Result:
    t = tables()
    breaks = fetchall(
        f"""
        SELECT id, entity_kind, entity_id, from_status, prev_to, prev_id, recorded_prev,
               count(*) OVER ()
        FROM (
            SELECT e.id, e.entity_kind, e.entity_id, e.from_status, e.hash_format,
                   e.prev_event_id AS recorded_prev,
                   lag(e.to_status) OVER w AS prev_to, lag(e.id) OVER w AS prev_id
            FROM {t["event"]} e
            WINDOW w AS (PARTITION BY e.entity_kind, e.entity_id ORDER BY e.id)
        ) s
        WHERE (prev_id IS NOT NULL AND from_status <> prev_to)
           OR (hash_format >= 2 AND recorded_prev IS DISTINCT FROM prev_id)
        ORDER BY id
        LIMIT %s
        """,
        [MAX_PROBLEMS_PER_CHECK],
    )
    mirrors = fetchall(
        f"""
        SELECT u.id, u.entity_kind, u.entity_id, o.id, o.entity_kind, o.entity_id,
               u.from_status, u.to_status, o.from_status, o.to_status, count(*) OVER ()
        FROM {t["event"]} u JOIN {t["event"]} o ON o.id = u.inverts_id
        WHERE u.inverts_id IS NOT NULL
          AND (o.entity_kind <> u.entity_kind OR o.entity_id <> u.entity_id
               OR u.from_status <> o.to_status OR u.to_status <> o.from_status
               OR o.id >= u.id)
        ORDER BY u.id
        LIMIT %s
        """,
        [MAX_PROBLEMS_PER_CHECK],
    )
    problems = [
        Problem(
            check="continuity",
            message=(
                f"{kind} {entity_id}: event {id_} starts from {from_status!r} but the previous "
                f"event {prev_id} ended at {prev_to!r}"
                if prev_id is not None and from_status != prev_to
                else f"{kind} {entity_id}: event {id_} names event {recorded_prev} as the "
                f"entity's previous one, but that is {prev_id}"
            ),
            entity_kind=kind,
            entity_id=entity_id,
            event_id=id_,
            expected=prev_to if prev_id is not None and from_status != prev_to else str(prev_id),
            found=from_status
            if prev_id is not None and from_status != prev_to
            else str(recorded_prev),
        )
        for id_, kind, entity_id, from_status, prev_to, prev_id, recorded_prev, _ in breaks
    ]
    for u_id, u_kind, u_ent, o_id, o_kind, o_ent, u_from, u_to, o_from, o_to, _ in mirrors:
        problems.append(
            Problem(
                check="continuity",
                message=(
                    f"undo event {u_id} ({u_kind} {u_ent}: {u_from} → {u_to}) does not mirror "
                    f"event {o_id} ({o_kind} {o_ent}: {o_from} → {o_to})"
                ),
                entity_kind=u_kind,
                entity_id=u_ent,
                event_id=u_id,
                expected=f"{o_to} → {o_from}",
                found=f"{u_from} → {u_to}",
            )
        )
    total = (breaks[0][7] if breaks else 0) + (mirrors[0][10] if mirrors else 0)
    checked = event_count()
    return checked, total, problems, ""
