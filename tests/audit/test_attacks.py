"""Attacks on the record by someone with database access, and what stops or catches each.

Three kinds of attacker: the application's own DML-only role (granted what ``corrections
privileges`` prints), the owner of the ledger's tables, and a superuser. The database refuses
the DML-only role outright; what the owner and a superuser can do is caught by ``verify`` —
with the external anchors where only they can tell (a re-hashed chain, a removed tail).
Roles made here are created inside the test's transaction and vanish with it.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import DatabaseError, connection, transaction

from commcare_connect.opportunity.models import OpportunityAccess
from ledger import anchors, chain, privileges, verify
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    LedgerHead,
    PlannedChange,
)

EVENTS = CorrectionEvent._meta.db_table
ENTRIES = BatchEntry._meta.db_table
BATCHES = CorrectionBatch._meta.db_table
LEDGER_TABLES = [
    m._meta.db_table
    for m in (CorrectionEvent, BatchEntry, PlannedChange, CorrectionBatch, AccrualRecompute,
              LedgerHead)
]  # fmt: skip


def _sql(statement: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def _refused(statement: str, params=None, *, ignore: str | None = None) -> str:
    """Run ``statement`` in a savepoint (after ``SET LOCAL pgtrigger.ignore`` when given);
    return the database's refusal, failing the test if it accepts."""
    try:
        with transaction.atomic():
            if ignore is not None:
                _sql(f"SET LOCAL pgtrigger.ignore = '{ignore}'")
            _sql(statement, params)
    except DatabaseError as error:
        return str(error)
    raise AssertionError(f"the database accepted: {statement}")


def _problems(report, check: str) -> list[str]:
    return [p.message for p in report.problems if p.check == check]


@pytest.fixture
def anchored(applied, settings, tmp_path):
    """The incident applied, with an external anchor taken right after (as apply does)."""
    settings.LEDGER_ANCHOR_KEY = "test-anchor-key"
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
    _sql(f"CREATE ROLE {owner} NOSUPERUSER NOLOGIN")
    _sql(f"CREATE ROLE {app} NOSUPERUSER NOLOGIN")
    _sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {app}")
    _sql("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks must not be pending for ALTER
    for table in LEDGER_TABLES:
        _sql(f"ALTER TABLE {table} OWNER TO {owner}")
    for (function,) in _sql(
        "SELECT DISTINCT t.tgfoid::regprocedure::text FROM pg_trigger t "
        "WHERE t.tgrelid = ANY(%s::regclass[]) AND NOT t.tgisinternal",
        [LEDGER_TABLES],
    ):
        _sql(f"ALTER FUNCTION {function} OWNER TO {owner}")
    _sql(f"SET ROLE {owner}")
    for statement in privileges.statements(app):
        if not statement.startswith("--"):
            _sql(statement)
    _sql("RESET ROLE")
    yield owner, app
    _sql("RESET ROLE")


def _all_guard_pgids() -> str:
    return "{" + ",".join(t.get_pgid(m) for m, t in verify.ledger_triggers()) + "}"


def test_the_app_role_cannot_rewrite_history_even_with_pgtrigger_ignore(applied, roles, run):
    _, app = roles
    event = CorrectionEvent.objects.filter(batch_id=applied.batch).first()
    _sql(f"SET ROLE {app}")
    assert verify.run_checks(["chain", "lifecycle"]).ok  # it reads what it needs
    for ignore in (None, _all_guard_pgids()):
        assert "permission denied" in _refused(
            f"DELETE FROM {EVENTS} WHERE id = %s", [event.pk], ignore=ignore
        )
        assert "permission denied" in _refused(f"TRUNCATE {EVENTS}", ignore=ignore)
        assert "permission denied" in _refused(
            f"UPDATE {EVENTS} SET reason = 'x' WHERE id = %s", [event.pk], ignore=ignore
        )
        # Columns it may update are held by guards it cannot lift.
        for column, value in (
            ("applied_by", "'mallory'"),
            ("applied_at", "now()"),
            ("skipped_conflicts", """'[{"entity_id": 1}]'::jsonb"""),
            ("summary", "'{}'::jsonb"),
        ):
            refusal = _refused(
                f"UPDATE {BATCHES} SET {column} = {value} WHERE id = %s",
                [applied.batch],
                ignore=ignore,
            )
            assert "set once" in refusal or "Cannot update" in refusal, refusal
        assert "done and final" in _refused(
            f"UPDATE {AccrualRecompute._meta.db_table} SET accrual_after = 0 WHERE batch_id = %s",
            [applied.batch],
            ignore=ignore,
        )
    assert "must be owner" in _refused(f"ALTER TABLE {EVENTS} DISABLE TRIGGER ALL")
    model, trigger = verify.ledger_triggers()[0]
    assert "must be owner" in _refused(
        f"ALTER TABLE {model._meta.db_table} ENABLE REPLICA TRIGGER {trigger.get_pgid(model)}"
    )
    replaced = _refused(
        f"CREATE OR REPLACE FUNCTION {trigger.get_pgid(model)}() RETURNS TRIGGER AS "
        "$$ BEGIN RETURN NULL; END; $$ LANGUAGE plpgsql"
    )
    assert "must be owner" in replaced or "permission denied" in replaced
    _sql("RESET ROLE")


def test_pgtrigger_ignore_lifts_guards_only_for_the_owner(applied, roles):
    owner, app = roles
    guard = "ledger.CorrectionBatch:ledger_batch_lifecycle_set_once"
    operator = CorrectionBatch.objects.get(pk=applied.batch).applied_by
    import pgtrigger

    _sql(f"SET ROLE {app}")
    with pgtrigger.ignore(guard):
        assert "set once" in _refused(
            f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [applied.batch]
        )
    _sql("RESET ROLE")
    _sql(f"SET ROLE {owner}")
    with pgtrigger.ignore(guard), transaction.atomic():
        _sql(f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [applied.batch])
        _sql("RESET ROLE")
        # …and verify catches the forged operator against the chained apply entry.
        report = verify.run_checks(["lifecycle"])
        assert any("applied_by says 'mallory'" in m for m in _problems(report, "lifecycle"))
        transaction.set_rollback(True)
    _sql("RESET ROLE")
    # The owner's forgery went with its rollback: the record and verify are as before.
    assert CorrectionBatch.objects.get(pk=applied.batch).applied_by == operator != "mallory"
    assert _problems(verify.run_checks(["lifecycle"]), "lifecycle") == []


def test_a_role_default_for_pgtrigger_ignore_is_reported(applied, roles):
    _, app = roles
    _sql(f"ALTER ROLE {app} SET pgtrigger.ignore = 'anything'")
    report = verify.run_checks(["triggers"])
    assert any(app in m and "pgtrigger.ignore" in m for m in _problems(report, "triggers"))


def _lift_all():
    import pgtrigger

    return pgtrigger.ignore(*[f"{m._meta.label}:{t.name}" for m, t in verify.ledger_triggers()])


def test_deleting_the_last_event_is_caught(anchored):
    applied, log = anchored
    last = CorrectionEvent.objects.order_by("-id").first()
    with _lift_all():
        _sql(f"DELETE FROM {EVENTS} WHERE id = %s", [last.pk])
    report = verify.run_checks(anchors=log)
    assert not report.ok
    assert _problems(report, "anchors")  # the anchored event is gone
    assert _problems(report, "plans")  # a planned change lost its event
    assert _problems(report, "lifecycle")  # the apply entry counted one more


def test_a_copied_event_appended_with_its_hash_is_caught(applied):
    """Event hashes are not indexed: a copy of an event, hash and all, is an ordinary insert
    for the application's role. The chain tells it apart: its ``prev_hash`` is not the hash of
    the event before it."""
    columns = ", ".join((*chain.CONTENT_FIELDS, "hash_format", "prev_hash", "hash"))
    last = CorrectionEvent.objects.order_by("-id").first()
    _sql(
        f"INSERT INTO {EVENTS} ({columns}) SELECT {columns} FROM {EVENTS} WHERE id = %s", [last.pk]
    )
    assert CorrectionEvent.objects.filter(hash=last.hash).count() == 2
    report = verify.run_checks(["chain"])
    assert not report.ok
    assert any(
        "prev_hash is not the previous event's hash" in m for m in _problems(report, "chain")
    )


def test_erasing_a_batch_and_restoring_host_rows_is_caught(anchored):
    applied, log = anchored
    with _lift_all():
        _sql(f"DELETE FROM {EVENTS} WHERE batch_id = %s", [applied.batch])
        _sql(f"DELETE FROM {ENTRIES} WHERE batch_id = %s", [applied.batch])
        _sql(f"DELETE FROM {AccrualRecompute._meta.db_table} WHERE batch_id = %s", [applied.batch])
        _sql(f"DELETE FROM {PlannedChange._meta.db_table} WHERE batch_id = %s", [applied.batch])
        _sql(f"DELETE FROM {BATCHES} WHERE id = %s", [applied.batch])
    report = verify.run_checks(["chain", "lifecycle"], anchors=log)
    assert _problems(report, "anchors")


def test_rewriting_and_rehashing_the_chain_is_caught_by_the_anchor(anchored):
    applied, log = anchored
    events = list(CorrectionEvent.objects.order_by("id"))
    prev = events[0].prev_hash
    with _lift_all():
        for event in events:
            values = {name: getattr(event, name) for name in chain.CONTENT_FIELDS}
            values["batch_id"] = str(event.batch_id)
            values["hash_format"] = event.hash_format
            if event.pk == events[1].pk:
                values["to_status"] = "approved"
            new = chain.event_hash(prev, values)
            _sql(
                f"UPDATE {EVENTS} SET to_status = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [values["to_status"], prev, new, event.pk],
            )
            prev = new
        _sql("UPDATE ledger_ledgerhead SET event_hash = %s WHERE id = 1", [prev])
    # The rewritten chain is consistent in itself…
    assert verify.run_checks(["chain"]).ok
    # …but not with the anchor kept outside the database.
    report = verify.run_checks(["chain"], anchors=log)
    assert any("history was rewritten" in m for m in _problems(report, "anchors"))


def test_a_forged_anchor_is_caught(anchored, tmp_path):
    _, log = anchored
    forged = tmp_path / "forged.jsonl"
    line = open(log).read().splitlines()[-1].replace('"events":', '"events":1', 1)
    forged.write_text(line + "\n")
    report = verify.run_checks(["chain"], anchors=str(forged))
    assert any("forged" in m for m in _problems(report, "anchors"))


def test_recomputes_marked_done_without_recomputing_are_caught(applied):
    # As if the recompute had been skipped: the accruals still hold what they held before.
    for access_id, before in AccrualRecompute.objects.filter(batch_id=applied.batch).values_list(
        "access_id", "accrual_before"
    ):
        OpportunityAccess.objects.filter(pk=access_id).update(payment_accrued=before)
    report = verify.run_checks(["accruals"], sample=None)
    assert len(_problems(report, "accruals")) == 2


def test_a_replaced_trigger_function_or_a_replica_trigger_is_caught(applied):
    model, trigger = next(
        (m, t) for m, t in verify.ledger_triggers() if t.name == "ledger_event_append_only"
    )
    pgid = trigger.get_pgid(model)
    _sql("SET CONSTRAINTS ALL IMMEDIATE")
    _sql(
        f"CREATE OR REPLACE FUNCTION {pgid}() RETURNS TRIGGER AS $$ BEGIN RETURN NULL; END; $$ "
        "LANGUAGE plpgsql"
    )
    _sql(f"ALTER TABLE {EVENTS} ENABLE REPLICA TRIGGER {pgid}")
    messages = _problems(verify.run_checks(["triggers"]), "triggers")
    assert any("body was replaced" in m for m in messages)
    assert any("enabled for replicas only" in m for m in messages)


def test_separator_characters_cannot_make_two_events_share_a_hash():
    base = {name: None for name in chain.CONTENT_FIELDS}
    base.update(batch_id="b", entity_kind="visit", entity_id=1, opportunity_id=1,
                to_status="over_limit", reason="r")  # fmt: skip
    # The same bytes under format 1: a separator moved from one field into its neighbour.
    one = {**base, "xform_id": "a\x1fb", "from_status": "c"}
    two = {**base, "xform_id": "a", "from_status": "b\x1fc"}
    assert chain.event_hash("0" * 64, one, 1) == chain.event_hash("0" * 64, two, 1)
    assert chain.event_hash("0" * 64, one, 2) != chain.event_hash("0" * 64, two, 2)
