"""Fixtures for the auditor tests: the incident after apply/undo, a command runner, and a way
to write chained events straight into the ledger (inserts are allowed; only UPDATE, DELETE and
TRUNCATE are refused)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import pgtrigger
import pytest
from django.db import DatabaseError, connection, transaction

from commcare_connect.demo.incident import IncidentData, build_incident
from ledger import anchors, chain, privileges, services, verify
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    BatchState,
    CorrectionBatch,
    CorrectionEvent,
    LedgerHead,
    PlannedChange,
)
from ledger.sql import reserve_ids
from ledger.testing import run_corrections


@pytest.fixture
def run():
    return run_corrections


@dataclass
class Story:
    """The incident after: plan (alice) → apply (bob) → undo (carol) of opportunity A."""

    incident: IncidentData
    batch: str
    undo: str | None
    before_apply: datetime.datetime
    after_apply: datetime.datetime
    after_undo: datetime.datetime | None


def _now() -> datetime.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def _apply(incident: IncidentData) -> tuple[str, datetime.datetime, datetime.datetime]:
    plan = services.plan_over_cap(
        [str(incident.opportunity_a.opportunity_id)],
        reason="CI-639 over-cap approvals",
        operator="alice",
        ticket="CI-639",
    )
    before = _now()
    services.apply_batch(plan.batch, operator="bob")
    return plan.batch, before, _now()


@pytest.fixture
def applied(db) -> Story:
    incident = build_incident()
    batch, before, after = _apply(incident)
    return Story(incident, batch, None, before, after, None)


@pytest.fixture
def undone(db) -> Story:
    incident = build_incident()
    batch, before, after = _apply(incident)
    run = services.undo_batch(batch, reason="PM approved these visits", operator="carol")
    return Story(incident, batch, run.batch, before, after, _now())


# --------------------------------------------------------------------------------------------
# Writing chained events directly
# --------------------------------------------------------------------------------------------


def last_hash() -> str:
    row = CorrectionEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    return row or chain.GENESIS


_LIFECYCLE = ("approved_by", "approved_at", "applied_by", "applied_at", "undone_at",
              "discarded_at", "skipped_conflicts")  # fmt: skip


def make_batch(state: str = BatchState.applied, **fields) -> CorrectionBatch:
    """A batch inserted as planned (the database refuses anything else), then moved to
    ``state`` with its lifecycle ``fields`` set, as the services would."""
    later = {name: fields.pop(name) for name in _LIFECYCLE if name in fields}
    fields.setdefault("planner", "visit_list")
    fields.setdefault("reason", "synthetic")
    fields.setdefault("planned_by", "tester")
    fields.setdefault("plan_digest", "0" * 64)
    batch = CorrectionBatch.objects.create(**fields)
    if state == BatchState.applied:
        later.setdefault("applied_by", "tester")
    if later:  # while planned: skipped conflicts are set once it leaves that state
        for name, value in later.items():
            setattr(batch, name, value)
        batch.save(update_fields=list(later))
    if state != BatchState.planned:
        batch.state = state
        batch.save(update_fields=["state"])
    return batch


def insert_events(batch: CorrectionBatch, rows: Iterable[dict], page: int = 2000) -> int:
    """Insert events chained after the current head, with ``recorded_at`` defaulting to now.

    Each row needs entity_kind, entity_id, opportunity_id, from_status, to_status; the rest
    defaults (each event names its entity's previous event, as the projector's do). Uses one
    multi-row INSERT per ``page`` rows, so 20k events take a moment.
    """
    columns = (*chain.CONTENT_FIELDS, "hash_format", "prev_hash", "hash")
    prev = last_hash()
    ids: list[int] = []
    now = datetime.datetime.now(datetime.UTC)
    buffer: list[tuple] = []
    pending: set[tuple[str, int]] = set()
    latest: dict[tuple[str, int], int | None] = {}
    count = 0

    def flush():
        # Ids are drawn from the sequence in order (they are hashed), so the chain follows
        # insertion order.
        if not buffer:
            return
        placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(buffer))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {CorrectionEvent._meta.db_table} ({', '.join(columns)}) "
                f"VALUES {placeholders}",
                [value for row in buffer for value in row],
            )
        buffer.clear()
        for key in pending:
            latest.pop(key, None)
        pending.clear()

    for row in rows:
        event = {
            "batch_id": str(batch.pk),
            "completed_work_id": None,
            "access_id": None,
            "xform_id": None,
            "reason": batch.reason,
            "inverts_id": None,
            "prior_status_modified_date": None,
            "new_status_modified_date": None,
            "recorded_at": now,
            "members": None,
            "hash_format": chain.CURRENT_FORMAT,
            **row,
        }
        key = (event["entity_kind"], event["entity_id"])
        if key in pending:
            flush()  # the entity's previous event must have its id first
        if key not in latest:
            latest[key] = (
                CorrectionEvent.objects.filter(entity_kind=key[0], entity_id=key[1])
                .order_by("-id")
                .values_list("id", flat=True)
                .first()
            )
        event.setdefault("prev_event_id", latest[key])
        if "id" not in event:
            if not ids:
                ids.extend(reversed(reserve_ids(CorrectionEvent, page)))
            event["id"] = ids.pop()
        pending.add(key)
        event["prev_hash"] = prev
        event["hash"] = prev = chain.event_hash(prev, event)
        buffer.append(tuple(event[c] for c in columns))
        count += 1
        if len(buffer) >= page:
            flush()
    flush()
    _move_head()
    return count


def _move_head() -> None:
    """Keep the chain head where the chain ends, as the projector does."""
    from ledger.head import lock_head

    with transaction.atomic():
        lock_head()
        with connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE ledger_ledgerhead SET
                        event_id = (SELECT max(id) FROM {CorrectionEvent._meta.db_table}),
                        event_hash = COALESCE((SELECT hash FROM {CorrectionEvent._meta.db_table}
                                               ORDER BY id DESC LIMIT 1), %s),
                        events = (SELECT count(*) FROM {CorrectionEvent._meta.db_table})
                    WHERE id = 1""",
                [chain.GENESIS],
            )


def new_uuid() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------------------------
# Attackers: raw SQL, roles, anchors
# --------------------------------------------------------------------------------------------

TEST_ANCHOR_KEY = "9f2c" * 16  # 256 bits, as hex
LEDGER_TABLES = [
    m._meta.db_table
    for m in (CorrectionEvent, BatchEntry, PlannedChange, CorrectionBatch, AccrualRecompute,
              LedgerHead)
]  # fmt: skip


def sql(statement: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def refused(statement: str, params=None, *, ignore: str | None = None) -> str:
    """Run ``statement`` in a savepoint (after ``SET LOCAL pgtrigger.ignore`` when given);
    return the database's refusal, failing the test if it accepts."""
    try:
        with transaction.atomic():
            if ignore is not None:
                sql(f"SET LOCAL pgtrigger.ignore = '{ignore}'")
            sql(statement, params)
    except DatabaseError as error:
        return str(error)
    raise AssertionError(f"the database accepted: {statement}")


def problems(report, check: str) -> list[str]:
    return [p.message for p in report.problems if p.check == check]


@pytest.fixture
def anchored(applied, settings, tmp_path):
    """The incident applied, with an external anchor taken right after (as apply does)."""
    settings.LEDGER_ANCHOR_KEY = TEST_ANCHOR_KEY
    settings.LEDGER_ANCHOR_LOG = str(tmp_path / "anchors.jsonl")
    anchors.take()
    assert verify.run_checks(anchors=settings.LEDGER_ANCHOR_LOG).ok
    return applied, settings.LEDGER_ANCHOR_LOG


@pytest.fixture
def roles(db):
    """A non-superuser owner of the ledger's tables and trigger functions, and an application
    role with what ``corrections privileges`` grants (plus the host's tables to read)."""
    tag = uuid.uuid4().hex[:8]
    owner, app = f"ledger_owner_{tag}", f"ledger_app_{tag}"
    sql(f"CREATE ROLE {owner} NOSUPERUSER NOLOGIN")
    sql(f"CREATE ROLE {app} NOSUPERUSER NOLOGIN")
    sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {app}")
    sql("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks must not be pending for ALTER
    others = sql(
        """SELECT pid, state, wait_event_type, wait_event, backend_start, left(query, 200)
           FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()"""
    )
    for table in LEDGER_TABLES:
        try:
            sql(f"ALTER TABLE {table} OWNER TO {owner}")
        except Exception as error:
            # The tables change owner inside the test's transaction: a session left behind by
            # another test and waiting on this one would deadlock it. Name it.
            raise AssertionError(
                f"ALTER TABLE {table} failed ({error}); other sessions: {others}"
            ) from error
    for (function,) in sql(
        "SELECT DISTINCT t.tgfoid::regprocedure::text FROM pg_trigger t "
        "WHERE t.tgrelid = ANY(%s::regclass[]) AND NOT t.tgisinternal",
        [LEDGER_TABLES],
    ):
        sql(f"ALTER FUNCTION {function} OWNER TO {owner}")
    sql(f"SET ROLE {owner}")
    for statement in privileges.statements(app):
        if not statement.startswith("--"):
            sql(statement)
    sql("RESET ROLE")
    yield owner, app
    sql("RESET ROLE")


def all_guard_pgids() -> str:
    return "{" + ",".join(t.get_pgid(m) for m, t in verify.ledger_triggers()) + "}"


def lift_all():
    """Lift every guard (for the owner: the session's role must own the tables)."""
    return pgtrigger.ignore(*[f"{m._meta.label}:{t.name}" for m, t in verify.ledger_triggers()])


def forge_entry(batch: str, action: str, actor: str, actor_id: int, details: dict) -> None:
    """Append a correctly chained lifecycle entry and move the head, with nothing but the
    grants of the application's role (INSERT on entries, UPDATE on the head)."""
    from ledger import entries

    head = sql("SELECT entry_hash FROM ledger_ledgerhead WHERE id = 1 FOR UPDATE")[0][0]
    at = sql("SELECT clock_timestamp()")[0][0]
    values = {"batch_id": batch, "action": action, "actor": actor, "actor_id": actor_id,
              "at": at, "details": entries.canonical(details)}  # fmt: skip
    entry_hash = chain.entry_hash(head, values)
    (entry_id,) = sql(
        "INSERT INTO ledger_batchentry (batch_id, action, actor, actor_id, at, details, "
        "hash_format, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, 2, %s, %s) RETURNING id",
        [batch, action, actor, actor_id, at, values["details"], head, entry_hash],
    )[0]
    sql("UPDATE ledger_ledgerhead SET entry_id = %s, entry_hash = %s, entries = entries + 1 "
        "WHERE id = 1", [entry_id, entry_hash])  # fmt: skip
    if action == "approve":
        sql("UPDATE ledger_correctionbatch SET approved_by = %s, approved_at = %s WHERE id = %s",
            [actor, at, batch])  # fmt: skip
