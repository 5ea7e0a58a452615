"""Every rule of the lifecycle proven by verify; the cheap ones refused by the database.

The application's role may append lifecycle entries (the application records every step), so
it can chain an entry naming whoever it likes. ``verify`` holds each batch to the rules a real
step obeys: plan, approve (when required) and apply in chain order, the approver an active
user other than the planner holding ``approve_correction``, the planner and the operator users
with their permissions — for every batch, however old it claims to be. The database refuses
what needs no judgement: a batch inserted in any state but ``planned`` or with a time of its
choosing, an event recorded before the one it follows, an event in an old hash format.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from commcare_connect.demo.incident import build_incident
from ledger import anchors, digests, services, verify
from ledger.models import CorrectionBatch, CorrectionEvent, PlannedChange
from ledger.planners.rows import PlannedRow, plan_digest
from ledger.verify.plans import digest_problems

from .conftest import (
    TEST_ANCHOR_KEY,
    forge_entry,
    insert_events,
    lift_all,
    make_batch,
    problems,
    refused,
    sql,
)

BATCHES = CorrectionBatch._meta.db_table
EVENTS = CorrectionEvent._meta.db_table
PLANNED = PlannedChange._meta.db_table


@pytest.fixture
def planned(db, settings, tmp_path):
    """The incident planned by alice, approval required, anchored by the witness."""
    settings.LEDGER_REQUIRE_APPROVAL = True
    settings.LEDGER_ANCHOR_KEY = TEST_ANCHOR_KEY
    settings.LEDGER_ANCHOR_LOG = str(tmp_path / "anchors.jsonl")
    incident = build_incident()
    plan = services.plan_over_cap(
        [str(incident.opportunity_a.opportunity_id)], reason="CI-639", operator="alice"
    )
    anchors.take()
    return plan


def _user(name: str, *, superuser: bool = False):
    User = get_user_model()
    if superuser:
        return User.objects.get(username=name)
    return User.objects.create_user(username=name, password=None)


@pytest.mark.parametrize(
    "who, says",
    [
        ("planner", "was approved by its own planner 'alice'"),
        ("nobody", "'mallory' (user 987654) is not a user"),
        ("no permission", "'dave' (user {dave}) lacks ledger.approve_correction"),
    ],
)
def test_a_forged_approval_is_caught(planned, roles, run, settings, who, says):
    """The application's role chains an approve entry, sets the approver and moves the head;
    apply goes through — but the witness will not sign it, and verify names the forgery."""
    _, app = roles
    alice = _user("alice", superuser=True)
    dave = _user("dave")
    actor, actor_id = {"planner": ("alice", alice.pk), "nobody": ("mallory", 987654),
                       "no permission": ("dave", dave.pk)}[who]  # fmt: skip
    sql(f"SET ROLE {app}")
    forge_entry(planned.batch, "approve", actor, actor_id, {"plan_digest": planned.plan_digest})
    sql("RESET ROLE")
    report = services.apply_batch(planned.batch, operator="bob")
    assert report.events > 0  # the forged approval let it through
    witness = run("anchor")  # what apply runs after its commit, or the scheduled witness
    assert witness.code == 1 and says.format(dave=dave.pk) in witness.err, witness.err
    assert "refusing to sign" in witness.err
    result = run("verify", "--anchors", settings.LEDGER_ANCHOR_LOG, "--sample", "0", "--json")
    assert result.code == 1
    messages = [p["message"] for p in result.json["problems"] if p["check"] == "lifecycle"]
    assert any(says.format(dave=dave.pk) in m for m in messages), messages


def test_apply_without_an_approval_entry_is_caught_when_approval_is_required(applied, settings):
    assert verify.run_checks(["lifecycle"]).ok
    settings.LEDGER_REQUIRE_APPROVAL = True
    messages = problems(verify.run_checks(["lifecycle"]), "lifecycle")
    assert any("applied without an approval" in m for m in messages)


def test_an_approval_after_the_apply_is_caught(applied, roles):
    _, app = roles
    bob = _user("bob", superuser=True)
    batch = CorrectionBatch.objects.get(pk=applied.batch)
    sql(f"SET ROLE {app}")
    forge_entry(applied.batch, "approve", "bob", bob.pk, {"plan_digest": batch.plan_digest})
    sql("RESET ROLE")
    messages = problems(verify.run_checks(["lifecycle"]), "lifecycle")
    assert any("was approved (entry" in m and "after it was applied" in m for m in messages)


def test_the_database_refuses_a_backdated_batch_from_nowhere(applied, roles):
    """The application's role may insert batches and events — as the ledger writes them."""
    _, app = roles
    last = CorrectionEvent.objects.order_by("-id").first()
    sql(f"SET ROLE {app}")
    columns = "id, planner, state, scope, reason, ticket, planned_by, plan_digest, summary"
    values = "gen_random_uuid(), 'visit_list', %s, '{}', 'r', '', 'nobody', %s, '{}'"
    refusal = refused(f"INSERT INTO {BATCHES} ({columns}, skipped_conflicts, approved_by, "
                      f"applied_by, created_at) VALUES ({values}, '[]', '', '', %s)",
                      ["applied", "0" * 64, "2026-01-01T00:00:00Z"])  # fmt: skip
    assert "a batch is inserted as planned" in refusal
    refusal = refused(f"INSERT INTO {BATCHES} ({columns}, skipped_conflicts, approved_by, "
                      f"applied_by, created_at) VALUES ({values}, '[]', '', '', %s)",
                      ["planned", "0" * 64, "2026-01-01T00:00:00Z"])  # fmt: skip
    assert "records the database's time" in refusal
    # An event recorded before the one it follows, or in an older hash format, or with none.
    copy = "batch_id, entity_kind, entity_id, opportunity_id, from_status, to_status, reason, "
    copy += "prev_hash, hash"
    old = (
        f"INSERT INTO {EVENTS} ({copy}, recorded_at, hash_format) SELECT {copy}, %s, %s "
        f"FROM {EVENTS} WHERE id = %s"
    )
    assert "recorded_at never decreases" in refused(old, ["2026-01-01T00:00:00Z", 3, last.pk])
    assert "hash format 3" in refused(old, [last.recorded_at, 2, last.pk])
    assert "null value" in refused(
        f"INSERT INTO {EVENTS} ({copy}, recorded_at) SELECT {copy}, recorded_at FROM {EVENTS} "
        "WHERE id = %s", [last.pk]
    )  # fmt: skip
    assert "in the future" in refused(old, ["2999-01-01T00:00:00Z", 3, last.pk])
    sql("RESET ROLE")


def test_verify_passes_over_no_batch_whatever_its_created_at(applied, roles, run):
    """A batch from nowhere — no lifecycle entries, planned by no user, created before any
    entry — written by the owner with the guards lifted, with an old event and the host row
    changed to match: verify fails it, and no note excuses it."""
    owner, _ = roles
    first_entry = sql("SELECT min(at) FROM ledger_batchentry")[0][0]
    sql(f"SET ROLE {owner}")
    with lift_all():
        batch = make_batch(planned_by="nobody")
        sql(f"UPDATE {BATCHES} SET created_at = %s WHERE id = %s",
            [first_entry.replace(year=first_entry.year - 1), batch.pk])  # fmt: skip
        insert_events(batch, [
            {"entity_kind": "visit", "entity_id": 424242, "opportunity_id": 1,
             "from_status": "approved", "to_status": "over_limit",
             "recorded_at": first_entry.replace(year=first_entry.year - 1)},
        ])  # fmt: skip
    sql("RESET ROLE")
    result = run("verify", "--sample", "0", "--json")
    assert result.code == 1
    assert not any("predate" in c["note"] for c in result.json["checks"])
    by_check = {}
    for p in result.json["problems"]:
        by_check.setdefault(p["check"], []).append(p["message"])
    assert any(f"batch {batch.pk} has no plan entry" in m for m in by_check["lifecycle"])
    assert any("recorded_at never decreases" in m for m in by_check["chain"])


def test_a_plan_edited_after_approval_is_refused_at_apply(planned, roles):
    """The owner moves an approved plan's money to another worker: apply refuses it."""
    owner, _ = roles
    bob = "bob"
    services.approve_batch(planned.batch, operator=bob, plan_digest=planned.plan_digest)
    other = PlannedChange.objects.filter(batch_id=planned.batch).exclude(access_id=None)
    change = other.first()
    sql(f"SET ROLE {owner}")
    sql(f"UPDATE {PLANNED} SET access_id = access_id + 1 WHERE id = %s", [change.pk])
    sql("RESET ROLE")
    from ledger.errors import WrongState

    with pytest.raises(WrongState, match="no longer match its plan digest"):
        services.apply_batch(planned.batch, operator="carol")


@pytest.mark.parametrize(
    "column, value",
    [("access_id", "access_id + 1"), ("opportunity_id", "opportunity_id + 1"),
     ("xform_id", "'forged'"), ("suspended", "NOT suspended")],
)  # fmt: skip
def test_a_plan_edited_after_apply_fails_the_digest(applied, roles, column, value):
    owner, _ = roles
    assert verify.run_checks(["plans"]).ok
    change = PlannedChange.objects.filter(batch_id=applied.batch, entity_kind="visit").first()
    sql(f"SET ROLE {owner}")
    with lift_all():
        sql(f"UPDATE {PLANNED} SET {column} = {value} WHERE id = %s", [change.pk])
    sql("RESET ROLE")
    messages = problems(verify.run_checks(["plans"]), "plans")
    assert any("do not give its plan digest" in m for m in messages), messages


def test_the_digest_check_of_named_batches_reads_only_them(applied, roles):
    """Anchoring re-checks only the batches touched since the last anchor: the digest check
    takes their ids both where it builds the texts and where it picks the batches."""
    owner, _ = roles
    assert digest_problems([str(applied.batch)]) == (0, [])
    change = PlannedChange.objects.filter(batch_id=applied.batch, entity_kind="visit").first()
    sql(f"SET ROLE {owner}")
    with lift_all():
        sql(f"UPDATE {PLANNED} SET xform_id = 'forged' WHERE id = %s", [change.pk])
    sql("RESET ROLE")
    total, found = digest_problems([str(applied.batch)])
    assert total == 1 and found[0].batch == str(applied.batch), found
    assert "do not give its plan digest" in found[0].message
    others = [
        str(b)
        for b in CorrectionBatch.objects.exclude(pk=applied.batch).values_list("pk", flat=True)
    ]
    assert digest_problems(others or ["00000000-0000-0000-0000-000000000000"]) == (0, [])
    assert digest_problems()[0] == 1


def test_the_digest_covers_every_column_and_sql_agrees_with_python(applied):
    rows = [
        PlannedRow(*values)
        for values in PlannedChange.objects.filter(batch_id=applied.batch)
        .order_by("entity_kind", "entity_id", "id")
        .values_list(*PlannedRow._fields)
    ]
    assert digests.FIELDS_V2 == PlannedRow._fields
    assert plan_digest(rows) == CorrectionBatch.objects.get(pk=applied.batch).plan_digest
    base = rows[0]
    for name in PlannedRow._fields:
        value = getattr(base, name)
        changed = (
            (not value)
            if isinstance(value, bool)
            else ((value or 0) + 1 if isinstance(value, int) or value is None else f"{value}x")
        )
        assert plan_digest([base._replace(**{name: changed})]) != plan_digest([base]), name
    for fmt in digests.FORMATS:
        with lift_all():
            sql(f"UPDATE {BATCHES} SET digest_format = %s, plan_digest = %s WHERE id = %s",
                [fmt, plan_digest(rows, fmt=fmt), applied.batch])  # fmt: skip
        report = verify.run_checks(["plans"])
        assert not problems(report, "plans"), (fmt, problems(report, "plans"))
