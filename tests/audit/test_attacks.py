"""Attacks on the record by someone with database access, and what stops or catches each.

Three kinds of attacker: the application's own DML-only role (granted what ``corrections
privileges`` prints), the owner of the ledger's tables, and a superuser. The database refuses
the DML-only role outright; what the owner and a superuser can do is caught by ``verify`` —
with the external anchors where only they can tell (a re-hashed chain, a removed tail).
Roles made here are created inside the test's transaction and vanish with it.
"""

from __future__ import annotations

from django.db import transaction

from commcare_connect.opportunity.models import OpportunityAccess
from ledger import chain, verify
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    PlannedChange,
)

from .conftest import all_guard_pgids, lift_all, problems, refused, sql

EVENTS = CorrectionEvent._meta.db_table
ENTRIES = BatchEntry._meta.db_table
BATCHES = CorrectionBatch._meta.db_table


def test_the_app_role_cannot_rewrite_history_even_with_pgtrigger_ignore(applied, roles, run):
    _, app = roles
    event = CorrectionEvent.objects.filter(batch_id=applied.batch).first()
    sql(f"SET ROLE {app}")
    assert verify.run_checks(["chain", "lifecycle"]).ok  # it reads what it needs
    for ignore in (None, all_guard_pgids()):
        assert "permission denied" in refused(
            f"DELETE FROM {EVENTS} WHERE id = %s", [event.pk], ignore=ignore
        )
        assert "permission denied" in refused(f"TRUNCATE {EVENTS}", ignore=ignore)
        assert "permission denied" in refused(
            f"UPDATE {EVENTS} SET reason = 'x' WHERE id = %s", [event.pk], ignore=ignore
        )
        # Columns it may update are held by guards it cannot lift.
        for column, value in (
            ("applied_by", "'mallory'"),
            ("applied_at", "now()"),
            ("skipped_conflicts", """'[{"entity_id": 1}]'::jsonb"""),
            ("summary", "'{}'::jsonb"),
        ):
            refusal = refused(
                f"UPDATE {BATCHES} SET {column} = {value} WHERE id = %s",
                [applied.batch],
                ignore=ignore,
            )
            assert "set once" in refusal or "Cannot update" in refusal, refusal
        assert "done and final" in refused(
            f"UPDATE {AccrualRecompute._meta.db_table} SET accrual_after = 0 WHERE batch_id = %s",
            [applied.batch],
            ignore=ignore,
        )
    assert "must be owner" in refused(f"ALTER TABLE {EVENTS} DISABLE TRIGGER ALL")
    model, trigger = verify.ledger_triggers()[0]
    assert "must be owner" in refused(
        f"ALTER TABLE {model._meta.db_table} ENABLE REPLICA TRIGGER {trigger.get_pgid(model)}"
    )
    replaced = refused(
        f"CREATE OR REPLACE FUNCTION {trigger.get_pgid(model)}() RETURNS TRIGGER AS "
        "$$ BEGIN RETURN NULL; END; $$ LANGUAGE plpgsql"
    )
    assert "must be owner" in replaced or "permission denied" in replaced
    sql("RESET ROLE")


def test_pgtrigger_ignore_lifts_guards_only_for_the_owner(applied, roles):
    owner, app = roles
    guard = "ledger.CorrectionBatch:ledger_batch_lifecycle_set_once"
    operator = CorrectionBatch.objects.get(pk=applied.batch).applied_by
    import pgtrigger

    sql(f"SET ROLE {app}")
    with pgtrigger.ignore(guard):
        assert "set once" in refused(
            f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [applied.batch]
        )
    sql("RESET ROLE")
    sql(f"SET ROLE {owner}")
    with pgtrigger.ignore(guard), transaction.atomic():
        sql(f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [applied.batch])
        sql("RESET ROLE")
        # …and verify catches the forged operator against the chained apply entry.
        report = verify.run_checks(["lifecycle"])
        assert any("applied_by says 'mallory'" in m for m in problems(report, "lifecycle"))
        transaction.set_rollback(True)
    sql("RESET ROLE")
    # The owner's forgery went with its rollback: the record and verify are as before.
    assert CorrectionBatch.objects.get(pk=applied.batch).applied_by == operator != "mallory"
    assert problems(verify.run_checks(["lifecycle"]), "lifecycle") == []


def test_a_role_default_for_pgtrigger_ignore_is_reported(applied, roles):
    _, app = roles
    sql(f"ALTER ROLE {app} SET pgtrigger.ignore = 'anything'")
    report = verify.run_checks(["triggers"])
    assert any(app in m and "pgtrigger.ignore" in m for m in problems(report, "triggers"))


def test_deleting_the_last_event_is_caught(anchored):
    applied, log = anchored
    last = CorrectionEvent.objects.order_by("-id").first()
    with lift_all():
        sql(f"DELETE FROM {EVENTS} WHERE id = %s", [last.pk])
    report = verify.run_checks(anchors=log)
    assert not report.ok
    assert problems(report, "anchors")  # the anchored event is gone
    assert problems(report, "plans")  # a planned change lost its event
    assert problems(report, "lifecycle")  # the apply entry counted one more


def test_a_copied_event_appended_with_its_hash_is_caught(applied):
    """Event hashes are not indexed: a copy of an event, hash and all, is an ordinary insert
    for the application's role. The chain tells it apart: its ``prev_hash`` is not the hash of
    the event before it."""
    columns = ", ".join(
        (*(f for f in chain.CONTENT_FIELDS if f != "id"), "hash_format", "prev_hash", "hash")
    )
    last = CorrectionEvent.objects.order_by("-id").first()
    sql(f"INSERT INTO {EVENTS} ({columns}) SELECT {columns} FROM {EVENTS} WHERE id = %s", [last.pk])
    assert CorrectionEvent.objects.filter(hash=last.hash).count() == 2
    report = verify.run_checks(["chain"])
    assert not report.ok
    assert any("prev_hash is not the previous event's hash" in m for m in problems(report, "chain"))


def test_erasing_a_batch_and_restoring_host_rows_is_caught(anchored):
    applied, log = anchored
    with lift_all():
        sql(f"DELETE FROM {EVENTS} WHERE batch_id = %s", [applied.batch])
        sql(f"DELETE FROM {ENTRIES} WHERE batch_id = %s", [applied.batch])
        sql(f"DELETE FROM {AccrualRecompute._meta.db_table} WHERE batch_id = %s", [applied.batch])
        sql(f"DELETE FROM {PlannedChange._meta.db_table} WHERE batch_id = %s", [applied.batch])
        sql(f"DELETE FROM {BATCHES} WHERE id = %s", [applied.batch])
    report = verify.run_checks(["chain", "lifecycle"], anchors=log)
    assert problems(report, "anchors")


def test_rewriting_and_rehashing_the_chain_is_caught_by_the_anchor(anchored):
    applied, log = anchored
    events = list(CorrectionEvent.objects.order_by("id"))
    prev = events[0].prev_hash
    with lift_all():
        for event in events:
            values = {name: getattr(event, name) for name in chain.CONTENT_FIELDS}
            values["batch_id"] = str(event.batch_id)
            values["hash_format"] = event.hash_format
            if event.pk == events[1].pk:
                values["to_status"] = "approved"
            new = chain.event_hash(prev, values)
            sql(
                f"UPDATE {EVENTS} SET to_status = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [values["to_status"], prev, new, event.pk],
            )
            prev = new
        sql("UPDATE ledger_ledgerhead SET event_hash = %s WHERE id = 1", [prev])
    # The rewritten chain is consistent in itself…
    assert verify.run_checks(["chain"]).ok
    # …but not with the anchor kept outside the database.
    report = verify.run_checks(["chain"], anchors=log)
    assert any("history was rewritten" in m for m in problems(report, "anchors"))


def test_a_forged_anchor_is_caught(anchored, tmp_path):
    _, log = anchored
    forged = tmp_path / "forged.jsonl"
    line = open(log).read().splitlines()[-1].replace('"events":', '"events":1', 1)
    forged.write_text(line + "\n")
    report = verify.run_checks(["chain"], anchors=str(forged))
    assert any("forged" in m for m in problems(report, "anchors"))


def test_recomputes_marked_done_without_recomputing_are_caught(applied):
    # As if the recompute had been skipped: the accruals still hold what they held before.
    for access_id, before in AccrualRecompute.objects.filter(batch_id=applied.batch).values_list(
        "access_id", "accrual_before"
    ):
        OpportunityAccess.objects.filter(pk=access_id).update(payment_accrued=before)
    report = verify.run_checks(["accruals"], sample=None)
    assert len(problems(report, "accruals")) == 2


def test_a_replaced_trigger_function_or_a_replica_trigger_is_caught(applied):
    model, trigger = next(
        (m, t) for m, t in verify.ledger_triggers() if t.name == "ledger_event_append_only"
    )
    pgid = trigger.get_pgid(model)
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    sql(
        f"CREATE OR REPLACE FUNCTION {pgid}() RETURNS TRIGGER AS $$ BEGIN RETURN NULL; END; $$ "
        "LANGUAGE plpgsql"
    )
    sql(f"ALTER TABLE {EVENTS} ENABLE REPLICA TRIGGER {pgid}")
    messages = problems(verify.run_checks(["triggers"]), "triggers")
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


def test_an_event_altered_after_apply_is_named_from_both_sides_by_plans(applied):
    """The plan check matches events and planned changes both ways: an event whose statuses
    were rewritten leaves its planned change without an event and is itself never planned."""
    event = CorrectionEvent.objects.filter(batch_id=applied.batch).order_by("id").first()
    assert verify.run_checks(["plans"]).ok
    with lift_all():
        sql(f"UPDATE {EVENTS} SET from_status = 'tampered' WHERE id = %s", [event.pk])
    messages = problems(verify.run_checks(["plans"]), "plans")
    unit = f"{event.entity_kind} {event.entity_id}"
    assert (
        f"batch {applied.batch}: {unit} was planned and not skipped, but has no event" in messages
    )
    assert f"batch {applied.batch}: event for {unit} that was never planned" in messages
    assert len(messages) == 2
