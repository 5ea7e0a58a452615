"""``recomputes``: no accrual recompute is left pending."""

from __future__ import annotations

from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables


def check_recomputes() -> Result:
    t = tables()
    rows = fetchall(
        f"""
        SELECT r.batch_id, r.access_id, r.created_at, count(*) OVER ()
        FROM {t["recompute"]} r
        WHERE r.state = 'pending'
        ORDER BY r.created_at, r.id
        LIMIT %s
        """,
        [MAX_PROBLEMS_PER_CHECK],
    )
    problems = [
        Problem(
            check="recomputes",
            message=(
                f"accrual recompute of access {access_id} for batch {batch_id} pending since "
                f"{created_at.isoformat()} (run: corrections recompute --pending)"
            ),
            batch=str(batch_id),
            entity_kind="access",
            entity_id=access_id,
        )
        for batch_id, access_id, created_at, _ in rows
    ]
    checked = scalar(f"SELECT count(*) FROM {t['recompute']}")
    return checked, (rows[0][3] if rows else 0), problems, ""
