"""``chain``: every event's hash recomputes and links to the previous one; the head names
the end of the chains."""

from __future__ import annotations

from ledger import chain
from ledger.verify.common import (
    MAX_PROBLEMS_PER_CHECK,
    ChainHead,
    Problem,
    Result,
    event_count,
    fetchall,
    scalar,
    tables,
)


def event_chain_problems(
    after_id: int | None = None,
    after_hash: str = chain.GENESIS,
    after_recorded_at=None,
) -> tuple[int, list[Problem]]:
    """The events after ``after_id`` (all, by default): each hash recomputes from its content
    and format, each ``prev_hash`` is the previous event's hash (the first's is ``after_hash``),
    and ``recorded_at`` never decreases (the first's predecessor was recorded at
    ``after_recorded_at``). Returns the total count of problems and the first ones."""
    t = tables()
    after = after_id if after_id is not None else -1
    # Two scans: recomputing every hash needs no order, so PostgreSQL spreads it over parallel
    # workers; the links and the order of recorded_at need each event's predecessor (a
    # window), which is cheap on its own.
    bad_hash = f"""FROM {t["event"]} e
                   WHERE e.id > %s AND e.hash IS DISTINCT FROM {chain.sql_hash_expression("e")}"""
    rehashed = []
    if scalar(f"SELECT count(*) {bad_hash}", [after]):  # the common answer: none
        rehashed = fetchall(
            f"""SELECT e.id, {chain.sql_hash_expression("e")}, count(*) OVER ()
                {bad_hash} ORDER BY e.id LIMIT %s""",
            [after, MAX_PROBLEMS_PER_CHECK],
        )
    linked = fetchall(
        f"""SELECT id, expected_prev, before, count(*) OVER ()
            FROM (
                SELECT e.id, e.prev_hash, e.recorded_at,
                       COALESCE(lag(e.hash) OVER w, %s) AS expected_prev,
                       COALESCE(lag(e.recorded_at) OVER w, %s) AS before
                FROM {t["event"]} e
                WHERE e.id > %s
                WINDOW w AS (ORDER BY e.id)
            ) s
            WHERE prev_hash IS DISTINCT FROM expected_prev OR recorded_at < before
            ORDER BY id LIMIT %s""",
        [after_hash, after_recorded_at, after, MAX_PROBLEMS_PER_CHECK],
    )
    computed_of = {id_: computed for id_, computed, _ in rehashed}
    link_of = {id_: (expected_prev, before) for id_, expected_prev, before, _ in linked}
    ids = sorted(set(computed_of) | set(link_of))[:MAX_PROBLEMS_PER_CHECK]
    found = fetchall(
        f"""SELECT id, prev_hash, hash, hash_format, recorded_at FROM {t["event"]}
            WHERE id = ANY(%s) ORDER BY id""",
        [ids],
    )
    total = (rehashed[0][2] if rehashed else 0) + (linked[0][3] if linked else 0)
    problems = []
    for id_, prev_hash, hash_, fmt, recorded in found:
        computed = computed_of.get(id_, hash_)
        expected_prev, before = link_of.get(id_, (prev_hash, None))
        if fmt not in chain.FORMATS:
            problems.append(
                Problem(
                    check="chain",
                    message=f"event {id_}: unknown hash_format {fmt}",
                    event_id=id_,
                    found=str(fmt),
                )
            )
        elif hash_ != computed:
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
        if before is not None and recorded < before:
            problems.append(
                Problem(
                    check="chain",
                    message=(
                        f"event {id_}: recorded at {recorded.isoformat()}, before the event it "
                        f"follows ({before.isoformat()}): recorded_at never decreases"
                    ),
                    event_id=id_,
                    expected=f">= {before.isoformat()}",
                    found=recorded.isoformat(),
                )
            )
    return total, problems


def check_chain() -> Result:
    total, problems = event_chain_problems()
    checked = event_count()
    note = f"first broken event: {problems[0].event_id}" if problems else ""
    head = head_problem()
    if head:
        problems.append(head)
        total += 1
    return checked, total, problems, note


def head_problem() -> Problem | None:
    """The head row (the ledger's write lock) must name the chains' actual last rows."""
    t = tables()
    rows = fetchall(
        f"SELECT event_id, event_hash, events, entry_id, entry_hash, entries "
        f"FROM {t['head']} WHERE id = 1"
    )
    actual = []
    for tbl in (t["event"], t["entry"]):
        last = fetchall(f"SELECT id, hash FROM {tbl} ORDER BY id DESC LIMIT 1")
        count = event_count() if tbl == t["event"] else scalar(f"SELECT count(*) FROM {tbl}")
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
