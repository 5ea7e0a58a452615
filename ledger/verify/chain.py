"""``chain``: every event's hash recomputes and links to the previous one; the head names
the end of the chains."""

from __future__ import annotations

from ledger import chain
from ledger.verify.common import (
    MAX_PROBLEMS_PER_CHECK,
    ChainHead,
    Problem,
    Result,
    fetchall,
    scalar,
    tables,
)


def check_chain() -> Result:
    t = tables()
    sql = f"""
        SELECT id, prev_hash, hash, expected_prev, computed, count(*) OVER () AS total
        FROM (
            SELECT e.id, e.prev_hash, e.hash,
                   COALESCE(lag(e.hash) OVER (ORDER BY e.id), %s) AS expected_prev,
                   {chain.sql_hash_expression("e")} AS computed
            FROM {t["event"]} e
        ) s
        WHERE prev_hash <> expected_prev OR hash <> computed
        ORDER BY id
        LIMIT %s
    """
    rows = fetchall(sql, [chain.GENESIS, MAX_PROBLEMS_PER_CHECK])
    checked = scalar(f"SELECT count(*) FROM {t['event']}")
    problems = []
    for id_, prev_hash, hash_, expected_prev, computed, _ in rows:
        if hash_ != computed:
            problems.append(
                Problem(
                    check="chain",
                    message=f"event {id_}: stored hash does not match its content (edited)",
                    event_id=id_,
                    expected=computed,
                    found=hash_,
                )
            )
        if prev_hash != expected_prev:
            problems.append(
                Problem(
                    check="chain",
                    message=(
                        f"event {id_}: prev_hash is not the previous event's hash "
                        "(an event was removed, inserted or re-hashed)"
                    ),
                    event_id=id_,
                    expected=expected_prev,
                    found=prev_hash,
                )
            )
    total = rows[0][5] if rows else 0
    head = _head_problem()
    if head:
        problems.append(head)
        total += 1
    note = f"first broken event: {rows[0][0]}" if rows else ""
    return checked, total, problems, note


def _head_problem() -> Problem | None:
    """The head row (the ledger's write lock) must name the chains' actual last rows."""
    t = tables()
    rows = fetchall(
        f"SELECT event_id, event_hash, events, entry_id, entry_hash, entries "
        f"FROM {t['head']} WHERE id = 1"
    )
    actual = []
    for tbl in (t["event"], t["entry"]):
        last = fetchall(f"SELECT id, hash FROM {tbl} ORDER BY id DESC LIMIT 1")
        count = scalar(f"SELECT count(*) FROM {tbl}")
        actual += [last[0][0] if last else None, last[0][1] if last else chain.GENESIS, count]
    if not rows:
        if actual[2] == 0 and actual[5] == 0:
            return None
        return Problem(check="chain", message="the chain head is gone")
    if tuple(rows[0]) != tuple(actual):
        return Problem(
            check="chain",
            message=(
                f"the chain head names event {rows[0][0]} ({rows[0][2]} events) and entry "
                f"{rows[0][3]} ({rows[0][5]} entries) but the chains end at event {actual[0]} "
                f"({actual[2]}) and entry {actual[3]} ({actual[5]}): rows were removed or "
                "added outside the ledger"
            ),
            event_id=actual[0],
            expected=rows[0][1],
            found=actual[1],
        )
    return None


def chain_head() -> ChainHead:
    t = tables()
    rows = fetchall(f"SELECT id, hash FROM {t['event']} ORDER BY id DESC LIMIT 1")
    events = scalar(f"SELECT count(*) FROM {t['event']}") if rows else 0
    return ChainHead(
        events=events,
        last_event_id=rows[0][0] if rows else None,
        last_hash=rows[0][1] if rows else None,
    )
