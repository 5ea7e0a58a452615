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
``batches``      a batch's state matches how many of its events are inverted (none: applied,
                 some: partially_undone, all: undone); events belong only to applied batches;
                 undo events invert events of the batch they revert, and only undo events
                 invert anything
``lifecycle``    the lifecycle entries' own hash chain holds, and every batch's planner,
                 approver, operator, times, summary and skipped conflicts equal its chained
                 plan / approve / apply / undo / discard entries (a forged column is caught)
``plans``        each applied batch's events are exactly its planned changes, less the units
                 it recorded as skipped (an event removed or added is caught)
``accruals``     each access the ledger recomputed holds the accrual the host's own code
                 computes now (in a rolled-back transaction; ``sample`` bounds how many)
``anchors``      with ``--anchors FILE``: every anchored event and entry still has its
                 anchored hash and count, and the anchor's signature holds
===============  ==============================================================================

``triggers`` also compares each guard's function body with its definition (a no-op body is
caught), requires each guard to be enabled in the ordinary way (``O``: not disabled, not
replica- or always-only), and refuses ``pgtrigger.ignore`` set as a role or database default.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable, Iterable

import msgspec
import pgtrigger
from django.db import connection, transaction

from ledger import accruals, chain, entries, host
from ledger.errors import LedgerError
from ledger.host import CompletedWork, UserVisit
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    LedgerHead,
    PlannedChange,
)

CHECKS = (
    "triggers",
    "chain",
    "continuity",
    "drift",
    "recomputes",
    "batches",
    "lifecycle",
    "plans",
    "accruals",
)
# Checks that need writes (rolled back) run after the read-only snapshot.
WRITING_CHECKS = ("accruals",)
DEFAULT_SAMPLE = 500
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
        "head": LedgerHead._meta.db_table,
        "entry": BatchEntry._meta.db_table,
        "planned": PlannedChange._meta.db_table,
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
        if enabled != "O":
            state = {"D": "disabled", "R": "enabled for replicas only", "A": "always-enabled"}
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {uri} on {table} is {state.get(enabled, enabled)}, "
                    "not enabled in the ordinary way",
                )
            )
    problems += _function_body_problems(expected)
    # A pgtrigger.ignore set in this session, or as a database or role default, silences
    # guards for the owner (and tells of an attempt by anyone else).
    ignored = _scalar("SELECT current_setting('pgtrigger.ignore', true)") or ""
    for _, pgid in expected:
        if pgid in ignored:
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {pgid} is ignored in this session (pgtrigger.ignore)",
                )
            )
    for role, database in _fetchall(
        """
        SELECT COALESCE(r.rolname, '(every role)'), COALESCE(d.datname, '(every database)')
        FROM pg_db_role_setting s
        LEFT JOIN pg_roles r ON r.oid = s.setrole
        LEFT JOIN pg_database d ON d.oid = s.setdatabase
        WHERE EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE 'pgtrigger.ignore=%%')
          AND (s.setdatabase = 0 OR d.datname = current_database())
        """
    ):
        problems.append(
            Problem(
                check="triggers",
                message=f"pgtrigger.ignore is set as a default for role {role} in database "
                f"{database} (ALTER ROLE/DATABASE … SET)",
            )
        )
    return len(expected), len(problems), problems, ""


_BODY = re.compile(r"CREATE OR REPLACE FUNCTION (\S+?)\(.*?\)\s+RETURNS \w+ AS \$\$(.*?)\$\$", re.S)


def _function_body_problems(expected: dict) -> list[Problem]:
    """Each guard's trigger function (and pgtrigger's ignore function) as its definition says.

    A trigger's comment holds its definition's hash, but anyone owning the function could
    replace the body and leave the comment: the bodies themselves are compared.
    """
    wanted: dict[str, str] = {}
    for (_, _), (model, trigger) in expected.items():
        for name, body in _BODY.findall(str(trigger.compile(model).sql)):
            wanted[name.replace('"', "").split(".")[-1]] = body
    stored = dict(
        _fetchall(
            "SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(%s)",
            [sorted(wanted)],
        )
    )
    problems = []
    for name, body in sorted(wanted.items()):
        if name not in stored:
            problems.append(Problem(check="triggers", message=f"function {name} is missing"))
        elif (
            hashlib.sha256(stored[name].encode()).digest() != hashlib.sha256(body.encode()).digest()
        ):
            problems.append(
                Problem(
                    check="triggers",
                    message=f"function {name} differs from its definition (its body was replaced)",
                )
            )
    return problems


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
    head = _head_problem()
    if head:
        problems.append(head)
        total += 1
    note = f"first broken event: {rows[0][0]}" if rows else ""
    return checked, total, problems, note


def _head_problem() -> Problem | None:
    """The head row (the ledger's write lock) must name the chains' actual last rows."""
    t = _tables()
    rows = _fetchall(
        f"SELECT event_id, event_hash, events, entry_id, entry_hash, entries "
        f"FROM {t['head']} WHERE id = 1"
    )
    actual = []
    for tbl in (t["event"], t["entry"]):
        last = _fetchall(f"SELECT id, hash FROM {tbl} ORDER BY id DESC LIMIT 1")
        count = _scalar(f"SELECT count(*) FROM {tbl}")
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
    # A batch's state says how many of its events are inverted: none (applied), some
    # (partially_undone) or all (undone).
    add(
        _fetchall(
            f"""
            SELECT b.id, b.state, count(e.id), count(i.id), count(*) OVER ()
            FROM {t["batch"]} b
            LEFT JOIN {t["event"]} e ON e.batch_id = b.id
            LEFT JOIN {t["event"]} i ON i.inverts_id = e.id
            WHERE b.state IN ('applied', 'partially_undone', 'undone') AND b.planner <> 'undo'
            GROUP BY b.id, b.state, b.created_at
            HAVING CASE b.state
                WHEN 'applied' THEN count(i.id) <> 0
                WHEN 'undone' THEN count(i.id) <> count(e.id)
                ELSE count(i.id) = 0 OR count(i.id) = count(e.id) END
            ORDER BY b.created_at LIMIT %s
            """,
            limit,
        ),
        lambda b, state, events, inverted: Problem(
            check="batches",
            batch=str(b),
            message=f"batch {b} is {state} but {inverted} of its {events} events are inverted",
        ),
    )
    # An undone or partially undone batch is reverted by at least one applied undo batch.
    add(
        _fetchall(
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
        _fetchall(
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


# --------------------------------------------------------------------------------------------
# (g) lifecycle
# --------------------------------------------------------------------------------------------


def _entry_chain_problems() -> tuple[int, list[Problem]]:
    t = _tables()
    rows = _fetchall(
        f"""
        SELECT id, batch_id, prev_hash, hash, expected_prev, computed, count(*) OVER ()
        FROM (
            SELECT n.id, n.batch_id, n.prev_hash, n.hash,
                   COALESCE(lag(n.hash) OVER (ORDER BY n.id), %s) AS expected_prev,
                   {chain.sql_entry_hash_expression("n")} AS computed
            FROM {t["entry"]} n
        ) s
        WHERE prev_hash <> expected_prev OR hash <> computed
        ORDER BY id LIMIT %s
        """,
        [chain.GENESIS, MAX_PROBLEMS_PER_CHECK],
    )
    problems = []
    for id_, batch, prev_hash, hash_, expected_prev, computed, _ in rows:
        what = "edited" if hash_ != computed else "removed, inserted or re-hashed before it"
        problems.append(
            Problem(
                check="lifecycle",
                batch=str(batch),
                message=f"lifecycle entry {id_}: the chain breaks here ({what})",
                expected=computed if hash_ != computed else expected_prev,
                found=hash_ if hash_ != computed else prev_hash,
            )
        )
    return (rows[0][6] if rows else 0), problems


def check_lifecycle() -> Result:
    """Every batch's columns against its chained lifecycle entries."""
    t = _tables()
    total, problems = _entry_chain_problems()
    first_entry = _scalar(f"SELECT min(at) FROM {t['entry']}")
    by_batch: dict[str, list[tuple]] = {}
    for batch_id, action, actor, at, details in _fetchall(
        f"SELECT batch_id, action, actor, at, details FROM {t['entry']} ORDER BY id"
    ):
        by_batch.setdefault(str(batch_id), []).append((action, actor, at, _decode(details)))
    events = {
        str(batch): (count, last_id, last_hash, inverted)
        for batch, count, last_id, last_hash, inverted in _fetchall(
            f"""
            SELECT e.batch_id, count(*), max(e.id),
                   (SELECT hash FROM {t["event"]} x WHERE x.id = max(e.id)),
                   count(i.id)
            FROM {t["event"]} e LEFT JOIN {t["event"]} i ON i.inverts_id = e.id
            GROUP BY e.batch_id
            """
        )
    }
    checked = legacy = 0
    for batch in CorrectionBatch.objects.order_by("created_at").iterator(chunk_size=2000):
        checked += 1
        if first_entry is None or batch.created_at < first_entry:
            if str(batch.pk) not in by_batch:
                legacy += 1  # planned before lifecycle entries existed
                continue
        found = _lifecycle_mismatches(batch, by_batch.get(str(batch.pk), []), events)
        total += len(found)
        problems += [
            Problem(check="lifecycle", batch=str(batch.pk), message=m, expected=e, found=f)
            for m, e, f in found
        ]
    note = f"{legacy} batches predate lifecycle entries" if legacy else ""
    return checked, total, problems[:MAX_PROBLEMS_PER_CHECK], note


def _decode(details: str) -> dict:
    try:
        value = msgspec.json.decode(details)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _lifecycle_mismatches(batch, steps: list[tuple], events: dict) -> list[tuple]:
    """(message, expected, found) for each column that disagrees with the entries."""
    found: list[tuple] = []
    by_action: dict[str, list[tuple]] = {}
    for step in steps:
        by_action.setdefault(step[0], []).append(step)

    def one(action: str) -> tuple | None:
        rows = by_action.get(action, [])
        if len(rows) > 1:
            found.append((f"batch {batch.pk} has {len(rows)} {action} entries", "1", None))
        return rows[0] if rows else None

    def same(what: str, column, entry_value) -> None:
        if column != entry_value:
            found.append(
                (f"batch {batch.pk}: {what} says {column!r}, its entry says {entry_value!r}",
                 str(entry_value), str(column))
            )  # fmt: skip

    plan = one("plan")
    if plan is None:
        found.append((f"batch {batch.pk} has no plan entry", "plan", None))
    else:
        same("planned_by", batch.planned_by, plan[1])
        expected = entries.plan_details(batch)
        for key, value in expected.items():
            if entries.canonical(plan[3].get(key)) != entries.canonical(value):
                same(key, value, plan[3].get(key))
    approve = one("approve")
    if approve is None:
        if batch.approved_by or batch.approved_at:
            found.append((f"batch {batch.pk} names an approver with no approve entry", None,
                          batch.approved_by))  # fmt: skip
    else:
        same("approved_by", batch.approved_by, approve[1])
        same("approved_at", batch.approved_at, approve[2])
    applied = one("apply")
    if batch.state in ("applied", "partially_undone", "undone"):
        if applied is None:
            found.append((f"batch {batch.pk} is {batch.state} with no apply entry", "apply", None))
        else:
            same("applied_by", batch.applied_by, applied[1])
            same("applied_at", batch.applied_at, applied[2])
            count, last_id, last_hash, _ = events.get(str(batch.pk), (0, None, None, 0))
            details = applied[3]
            same("its event count", count, details.get("events"))
            same("its last event", last_id, details.get("last_event_id"))
            same("its last event's hash", last_hash, details.get("last_event_hash"))
            same(
                "skipped_conflicts",
                entries.digest(batch.skipped_conflicts),
                details.get("skipped_sha256"),
            )
    elif applied is not None or batch.applied_by or batch.applied_at:
        found.append((f"batch {batch.pk} is {batch.state} but records an apply", None, "apply"))
    undos = by_action.get("undo", [])
    inverted = events.get(str(batch.pk), (0, None, None, 0))[3]
    if sum(u[3].get("events", 0) for u in undos) != inverted:
        found.append(
            (f"batch {batch.pk}: its undo entries invert "
             f"{sum(u[3].get('events', 0) for u in undos)} events, {inverted} are inverted",
             str(inverted), None)
        )  # fmt: skip
    final = [u for u in undos if u[3].get("state") == "undone"]
    if batch.state == "undone":
        if not final:
            found.append((f"batch {batch.pk} is undone with no undo entry", "undo", None))
        else:
            same("undone_at", batch.undone_at, final[-1][2])
    elif final or batch.undone_at:
        found.append((f"batch {batch.pk} is {batch.state} but records a full undo", None, "undo"))
    discard = one("discard")
    if batch.state == "discarded":
        if discard is None:
            found.append((f"batch {batch.pk} is discarded with no discard entry", "discard", None))
        else:
            same("discarded_at", batch.discarded_at, discard[2])
    elif discard is not None or batch.discarded_at:
        found.append((f"batch {batch.pk} is {batch.state} but records a discard", None, "discard"))
    return found


# --------------------------------------------------------------------------------------------
# (h) plans
# --------------------------------------------------------------------------------------------


def check_plans() -> Result:
    """Each applied batch's events against its planned changes and its recorded skips."""
    t = _tables()
    rows = _fetchall(
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
    checked = _scalar(
        f"""SELECT count(*) FROM {t["batch"]}
            WHERE planner <> 'undo' AND state IN ('applied', 'partially_undone', 'undone')"""
    )
    return checked, (rows[0][4] if rows else 0), problems, ""


# --------------------------------------------------------------------------------------------
# (i) accruals
# --------------------------------------------------------------------------------------------


def check_accruals(sample: int | None = DEFAULT_SAMPLE) -> Result:
    """The accesses the ledger recomputed hold what the host's own code computes now.

    Each access is recomputed by the host inside a savepoint that is rolled back, so nothing
    changes. ``sample`` bounds how many accesses are looked at (chosen at random); None or 0
    checks them all.
    """
    t = _tables()
    access_ids = [
        pk for (pk,) in _fetchall(
            f"SELECT DISTINCT access_id FROM {t['recompute']} WHERE state = 'done' ORDER BY 1"
        )
    ]  # fmt: skip
    total_accesses = len(access_ids)
    if sample and total_accesses > sample:
        access_ids = sorted(random.sample(access_ids, sample))
    stored = dict(
        host.OpportunityAccess.objects.filter(pk__in=access_ids).values_list(
            "pk", "payment_accrued"
        )
    )
    problems = []
    with transaction.atomic():
        for access_id in access_ids:
            if access_id not in stored:
                continue  # the access is gone
            computed = accruals.recompute_access(access_id, rollback=True)
            if computed != stored[access_id]:
                problems.append(
                    Problem(
                        check="accruals",
                        entity_kind="access",
                        entity_id=access_id,
                        message=(
                            f"access {access_id}: payment_accrued is {stored[access_id]}, the "
                            f"host's recompute gives {computed} (stale: a recompute marked "
                            "done that did not run, or a change since)"
                        ),
                        expected=str(computed),
                        found=str(stored[access_id]),
                    )
                )
        transaction.set_rollback(True)
    note = f"{len(access_ids)} of {total_accesses} accesses"
    return len(access_ids), len(problems), problems[:MAX_PROBLEMS_PER_CHECK], note


_RUNNERS: dict[str, Callable[[], Result]] = {
    "triggers": check_triggers,
    "chain": check_chain,
    "continuity": check_continuity,
    "drift": check_drift,
    "recomputes": check_recomputes,
    "batches": check_batches,
    "lifecycle": check_lifecycle,
    "plans": check_plans,
}


def _outcome(name: str, runner: Callable[[], Result]) -> tuple[CheckOutcome, list[Problem]]:
    started = time.monotonic()
    checked, total, listed, note = runner()
    return (
        CheckOutcome(
            name=name,
            ok=total == 0,
            checked=checked,
            problems=total,
            seconds=round(time.monotonic() - started, 3),
            note=note,
        ),
        listed,
    )


def _anchor_check(path: str) -> Result:
    from ledger import anchors

    items = anchors.read(path)
    found, note = anchors.check(items)
    problems = [
        Problem(check="anchors", message=f"{path}, line {p.line}: {p.message}") for p in found
    ]
    return len(items), len(problems), problems, note


def run_checks(
    names: list[str] | None = None,
    *,
    sample: int | None = DEFAULT_SAMPLE,
    anchors: str | None = None,
) -> VerifyReport:
    """Run the named checks (all of :data:`CHECKS` by default) and report.

    ``report.ok`` is true only when every check found nothing; ``report.problems`` names the
    entity, event or batch of each violation. ``sample`` bounds the accrual check; ``anchors``
    names a file of external anchors to hold the chain to.
    """
    names = list(CHECKS) if names is None else list(names)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise LedgerError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    if anchors is not None:
        from ledger import anchors as anchor_file

        anchor_file.read(anchors)  # a bad file is refused before any check runs
    outcomes: list[CheckOutcome] = []
    problems: list[Problem] = []

    def read_only() -> None:
        for name in names:
            if name in WRITING_CHECKS:
                continue
            outcome, listed = _outcome(name, _RUNNERS[name])
            outcomes.append(outcome)
            problems.extend(listed)
        if anchors is not None:
            outcome, listed = _outcome("anchors", lambda: _anchor_check(anchors))
            outcomes.append(outcome)
            problems.extend(listed)

    if connection.in_atomic_block:
        read_only()
    else:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            read_only()
    if "accruals" in names:
        outcome, listed = _outcome("accruals", lambda: check_accruals(sample))
        outcomes.append(outcome)
        problems.extend(listed)
    return VerifyReport(
        ok=all(o.ok for o in outcomes), checks=outcomes, problems=problems, head=chain_head()
    )
