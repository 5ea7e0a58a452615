"""``corrections verify``: the ledger's invariants, checked set-based on live data.

Each check is one or a few SQL statements over whole tables (window functions, anti-joins),
never a Python loop over events, so it stays fast on millions of events. Checks run in one
``REPEATABLE READ READ ONLY`` transaction when called outside a transaction, so they all see
the same snapshot while corrections keep being applied.

===============  ==============================================================================
check            what it proves
===============  ==============================================================================
``triggers``     every guard trigger of the ledger's models (append-only events, no truncate,
                 batch state machine, frozen plans, …) is installed, current and enabled
``chain``        every event's ``prev_hash`` is the previous event's ``hash`` (the first one's is
                 :data:`ledger.chain.GENESIS`) and its ``hash`` recomputes from its content
``continuity``   each entity's consecutive events chain (``from_status`` = previous
                 ``to_status``); every inverse event mirrors the event it inverts
``drift``        every corrected entity's host status equals its last event's ``to_status``;
                 otherwise it is drift (something outside the ledger changed it, or the host
                 row is gone)
``recomputes``   no accrual recompute is left pending
``batches``      every undone batch has exactly one applied undo batch reverting it and vice
                 versa; events belong only to applied or undone batches; undo events invert
                 events of the batch they revert, and only undo events invert anything
===============  ==============================================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import msgspec
import pgtrigger
from django.db import connection, transaction

from ledger import chain
from ledger.errors import LedgerError
from ledger.host import CompletedWork, UserVisit
from ledger.models import AccrualRecompute, CorrectionBatch, CorrectionEvent

CHECKS = ("triggers", "chain", "continuity", "drift", "recomputes", "batches")
MAX_PROBLEMS_PER_CHECK = 100


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One violation. Which fields are set depends on the check."""

    check: str
    message: str
    entity_kind: str | None = None
    entity_id: int | None = None
    event_id: int | None = None
    batch: str | None = None
    expected: str | None = None
    found: str | None = None


class CheckOutcome(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    checked: int
    """How many rows (triggers, events, entities, batches…) the check looked at."""
    problems: int
    """Total problems found (only the first ``MAX_PROBLEMS_PER_CHECK`` are listed)."""
    seconds: float
    note: str = ""


class ChainHead(msgspec.Struct, kw_only=True):
    """The last event: record its hash somewhere safe to detect a later truncation."""

    events: int
    last_event_id: int | None
    last_hash: str | None


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    checks: list[CheckOutcome]
    problems: list[Problem]
    head: ChainHead


def _tables() -> dict[str, str]:
    return {
        "event": CorrectionEvent._meta.db_table,
        "batch": CorrectionBatch._meta.db_table,
        "recompute": AccrualRecompute._meta.db_table,
        "visit": UserVisit._meta.db_table,
        "work": CompletedWork._meta.db_table,
    }


def _fetchall(sql: str, params: Iterable = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return cursor.fetchall()


def _scalar(sql: str, params: Iterable = ()):
    return _fetchall(sql, params)[0][0]


Result = tuple[int, int, list[Problem], str]
"""(checked, total problems, listed problems, note)"""


# --------------------------------------------------------------------------------------------
# (a) triggers
# --------------------------------------------------------------------------------------------


def ledger_triggers() -> list[tuple[type, pgtrigger.Trigger]]:
    return [
        (model, trigger)
        for model, trigger in pgtrigger.registered()
        if model._meta.app_label == CorrectionEvent._meta.app_label
    ]


def check_triggers() -> Result:
    expected = {}
    for model, trigger in ledger_triggers():
        pgid = trigger.get_pgid(model)
        expected[(model._meta.db_table, pgid)] = (model, trigger)
    rows = _fetchall(
        """
        SELECT c.relname, t.tgname, obj_description(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal AND c.relname = ANY(%s) AND t.tgname = ANY(%s)
        """,
        [
            sorted({table for table, _ in expected}),
            sorted({pgid for _, pgid in expected}),
        ],
    )
    installed = {
        (table, name): (description, enabled) for table, name, description, enabled in rows
    }
    problems = []
    for (table, pgid), (model, trigger) in sorted(expected.items(), key=lambda kv: kv[0]):
        uri = f"{model._meta.label}:{trigger.name}"
        if (table, pgid) not in installed:
            problems.append(
                Problem(check="triggers", message=f"trigger {uri} is not installed on {table}")
            )
            continue
        description, enabled = installed[(table, pgid)]
        if description != trigger.compile(model).hash:
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {uri} on {table} differs from its definition (outdated)",
                )
            )
        if enabled == "D":
            problems.append(
                Problem(check="triggers", message=f"trigger {uri} on {table} is disabled")
            )
    # A pgtrigger.ignore set as a database or role default would silence the guards for
    # every session; it shows up in this session's settings.
    ignored = _scalar("SELECT current_setting('pgtrigger.ignore', true)") or ""
    for _, pgid in expected:
        if pgid in ignored:
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {pgid} is ignored in this session (pgtrigger.ignore)",
                )
            )
    return len(expected), len(problems), problems, ""


# --------------------------------------------------------------------------------------------
# (b) chain
# --------------------------------------------------------------------------------------------


def check_chain() -> Result:
    t = _tables()
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
    rows = _fetchall(sql, [chain.GENESIS, MAX_PROBLEMS_PER_CHECK])
    checked = _scalar(f"SELECT count(*) FROM {t['event']}")
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
    note = f"first broken event: {rows[0][0]}" if rows else ""
    return checked, total, problems, note


def chain_head() -> ChainHead:
    t = _tables()
    rows = _fetchall(f"SELECT id, hash FROM {t['event']} ORDER BY id DESC LIMIT 1")
    events = _scalar(f"SELECT count(*) FROM {t['event']}") if rows else 0
    return ChainHead(
        events=events,
        last_event_id=rows[0][0] if rows else None,
        last_hash=rows[0][1] if rows else None,
    )


# --------------------------------------------------------------------------------------------
# (c) continuity
# --------------------------------------------------------------------------------------------


def check_continuity() -> Result:
    t = _tables()
    breaks = _fetchall(
        f"""
        SELECT id, entity_kind, entity_id, from_status, prev_to, prev_id, count(*) OVER ()
        FROM (
            SELECT e.id, e.entity_kind, e.entity_id, e.from_status,
                   lag(e.to_status) OVER w AS prev_to, lag(e.id) OVER w AS prev_id
            FROM {t["event"]} e
            WINDOW w AS (PARTITION BY e.entity_kind, e.entity_id ORDER BY e.id)
        ) s
        WHERE prev_id IS NOT NULL AND from_status <> prev_to
        ORDER BY id
        LIMIT %s
        """,
        [MAX_PROBLEMS_PER_CHECK],
    )
    mirrors = _fetchall(
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
            ),
            entity_kind=kind,
            entity_id=entity_id,
            event_id=id_,
            expected=prev_to,
            found=from_status,
        )
        for id_, kind, entity_id, from_status, prev_to, prev_id, _ in breaks
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
    total = (breaks[0][6] if breaks else 0) + (mirrors[0][10] if mirrors else 0)
    checked = _scalar(f"SELECT count(*) FROM {t['event']}")
    return checked, total, problems, ""


# --------------------------------------------------------------------------------------------
# (d) drift
# --------------------------------------------------------------------------------------------


def check_drift() -> Result:
    t = _tables()
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
    rows = _fetchall(sql, [MAX_PROBLEMS_PER_CHECK])
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
            _scalar(
                f"SELECT count(*) FROM (SELECT DISTINCT entity_kind, entity_id FROM {t['event']}) s"
            ),
        )
    return checked, total, problems, ""


# --------------------------------------------------------------------------------------------
# (e) recomputes
# --------------------------------------------------------------------------------------------


def check_recomputes() -> Result:
    t = _tables()
    rows = _fetchall(
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
    checked = _scalar(f"SELECT count(*) FROM {t['recompute']}")
    return checked, (rows[0][3] if rows else 0), problems, ""


# --------------------------------------------------------------------------------------------
# (f) batches
# --------------------------------------------------------------------------------------------


def check_batches() -> Result:
    t = _tables()
    problems: list[Problem] = []
    total = 0

    def add(rows, make):
        nonlocal total
        if rows:
            total += rows[0][-1]
        problems.extend(make(*row[:-1]) for row in rows)

    limit = [MAX_PROBLEMS_PER_CHECK]
    # An undone batch has exactly one applied undo batch reverting it (the one-to-one
    # ``reverts`` makes "more than one" impossible; "none" or "not applied" is checked here).
    add(
        _fetchall(
            f"""
            SELECT b.id, u.id, u.state, u.planner, count(*) OVER ()
            FROM {t["batch"]} b LEFT JOIN {t["batch"]} u ON u.reverts_id = b.id
            WHERE b.state = 'undone'
              AND (u.id IS NULL OR u.state <> 'applied' OR u.planner <> 'undo')
            ORDER BY b.created_at LIMIT %s
            """,
            limit,
        ),
        lambda b, u, state, planner: Problem(
            check="batches",
            batch=str(b),
            message=(
                f"batch {b} is undone but no applied undo batch reverts it"
                if u is None
                else f"batch {b} is undone but its undo batch {u} is {planner}/{state}"
            ),
        ),
    )
    # An applied undo batch leaves the batch it reverts undone.
    add(
        _fetchall(
            f"""
            SELECT u.id, b.id, b.state, count(*) OVER ()
            FROM {t["batch"]} u JOIN {t["batch"]} b ON b.id = u.reverts_id
            WHERE u.state IN ('applied', 'undone') AND b.state <> 'undone'
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
        _fetchall(
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
        _fetchall(
            f"""
            SELECT b.id, b.state, count(*) OVER ()
            FROM {t["batch"]} b
            WHERE b.state NOT IN ('applied', 'undone')
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
        _fetchall(
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
    checked = _scalar(f"SELECT count(*) FROM {t['batch']}")
    return checked, total, problems[: MAX_PROBLEMS_PER_CHECK * 5], ""


_RUNNERS: dict[str, Callable[[], Result]] = {
    "triggers": check_triggers,
    "chain": check_chain,
    "continuity": check_continuity,
    "drift": check_drift,
    "recomputes": check_recomputes,
    "batches": check_batches,
}


def _run(names: list[str]) -> VerifyReport:
    outcomes, problems = [], []
    for name in names:
        started = time.monotonic()
        checked, total, listed, note = _RUNNERS[name]()
        outcomes.append(
            CheckOutcome(
                name=name,
                ok=total == 0,
                checked=checked,
                problems=total,
                seconds=round(time.monotonic() - started, 3),
                note=note,
            )
        )
        problems.extend(listed)
    return VerifyReport(
        ok=all(o.ok for o in outcomes), checks=outcomes, problems=problems, head=chain_head()
    )


def run_checks(names: list[str] | None = None) -> VerifyReport:
    """Run the named checks (all of :data:`CHECKS` by default) and report.

    ``report.ok`` is true only when every check found nothing; ``report.problems`` names the
    entity, event or batch of each violation.
    """
    names = list(CHECKS) if names is None else list(names)
    unknown = [n for n in names if n not in _RUNNERS]
    if unknown:
        raise LedgerError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    if connection.in_atomic_block:
        return _run(names)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _run(names)
