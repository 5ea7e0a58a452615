"""``batches``: each batch's state agrees with its events and the undo batches that revert it."""

from __future__ import annotations

from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables
from ledger.verify.lifecycle import read_events


def check_batches() -> Result:
    t = tables()
    problems: list[Problem] = []
    total = 0

    def add(rows, make):
        nonlocal total
        if rows:
            total += rows[0][-1]
        problems.extend(make(*row[:-1]) for row in rows)

    limit = [MAX_PROBLEMS_PER_CHECK]
    # A batch's state says how many of its events are inverted: none (applied), some
    # (partially_undone) or all (undone). The counts are the lifecycle check's own.
    counts = read_events()
    wrong = []
    for b, state in fetchall(
        f"""SELECT b.id, b.state FROM {t["batch"]} b
            WHERE b.state IN ('applied', 'partially_undone', 'undone') AND b.planner <> 'undo'
            ORDER BY b.created_at"""
    ):
        events, _, _, inverted = counts.get(str(b), (0, None, None, 0))
        right = {"applied": inverted == 0, "undone": inverted == events}
        if not right.get(state, 0 < inverted < events):
            wrong.append((b, state, events, inverted))
    add(
        [(*row, len(wrong)) for row in wrong[:MAX_PROBLEMS_PER_CHECK]],
        lambda b, state, events, inverted: Problem(
            check="batches",
            batch=str(b),
            message=f"batch {b} is {state} but {inverted} of its {events} events are inverted",
        ),
    )
    # An undone or partially undone batch is reverted by at least one applied undo batch.
    add(
        fetchall(
            f"""
            SELECT b.id, b.state, count(*) OVER ()
            FROM {t["batch"]} b
            WHERE b.state IN ('partially_undone', 'undone') AND NOT EXISTS (
                SELECT 1 FROM {t["batch"]} u
                WHERE u.reverts_id = b.id AND u.state = 'applied' AND u.planner = 'undo')
            ORDER BY b.created_at LIMIT %s
            """,
            limit,
        ),
        lambda b, state: Problem(
            check="batches",
            batch=str(b),
            message=f"batch {b} is {state} but no applied undo batch reverts it",
        ),
    )
    # An undo batch reverts an applied, partially undone or undone batch.
    add(
        fetchall(
            f"""
            SELECT u.id, b.id, b.state, count(*) OVER ()
            FROM {t["batch"]} u JOIN {t["batch"]} b ON b.id = u.reverts_id
            WHERE u.state = 'applied'
              AND b.state NOT IN ('applied', 'partially_undone', 'undone')
            ORDER BY u.created_at LIMIT %s
            """,
            limit,
        ),
        lambda u, b, state: Problem(
            check="batches",
            batch=str(u),
            message=f"undo batch {u} is applied but the batch it reverts, {b}, is {state}",
        ),
    )
    # Only undo batches revert anything.
    add(
        fetchall(
            f"""
            SELECT b.id, b.planner, count(*) OVER ()
            FROM {t["batch"]} b
            WHERE (b.planner = 'undo') <> (b.reverts_id IS NOT NULL)
            ORDER BY b.created_at LIMIT %s
            """,
            limit,
        ),
        lambda b, planner: Problem(
            check="batches",
            batch=str(b),
            message=(
                f"undo batch {b} reverts no batch"
                if planner == "undo"
                else f"{planner} batch {b} claims to revert a batch"
            ),
        ),
    )
    # Events belong only to batches that were applied (and maybe undone since).
    add(
        fetchall(
            f"""
            SELECT b.id, b.state, count(*) OVER ()
            FROM {t["batch"]} b
            WHERE b.state NOT IN ('applied', 'partially_undone', 'undone')
              AND EXISTS (SELECT 1 FROM {t["event"]} e WHERE e.batch_id = b.id)
            ORDER BY b.created_at LIMIT %s
            """,
            limit,
        ),
        lambda b, state: Problem(
            check="batches", batch=str(b), message=f"batch {b} is {state} yet has events"
        ),
    )
    # Undo events invert events of the batch their batch reverts; other events invert nothing.
    add(
        fetchall(
            f"""
            SELECT e.id, e.batch_id, b.planner, o.batch_id, b.reverts_id, count(*) OVER ()
            FROM {t["event"]} e
            JOIN {t["batch"]} b ON b.id = e.batch_id
            LEFT JOIN {t["event"]} o ON o.id = e.inverts_id
            WHERE CASE WHEN b.planner = 'undo'
                       THEN o.id IS NULL OR o.batch_id IS DISTINCT FROM b.reverts_id
                       ELSE e.inverts_id IS NOT NULL END
            ORDER BY e.id LIMIT %s
            """,
            limit,
        ),
        lambda e, batch, planner, o_batch, reverts: Problem(
            check="batches",
            batch=str(batch),
            event_id=e,
            message=(
                f"event {e} of undo batch {batch} inverts "
                + (f"an event of batch {o_batch}" if o_batch else "nothing")
                + f", not one of {reverts}"
                if planner == "undo"
                else f"event {e} of {planner} batch {batch} inverts an event"
            ),
        ),
    )
    checked = scalar(f"SELECT count(*) FROM {t['batch']}")
    return checked, total, problems[: MAX_PROBLEMS_PER_CHECK * 5], ""
