"""A crash between commit and recompute, and the database's own guards."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction

from commcare_connect.opportunity.models import OpportunityAccess
from ledger import testing
from ledger.models import AccrualRecompute, CorrectionBatch, CorrectionEvent

ROOT = Path(__file__).resolve().parents[2]


def _committed_and_recomputing(batch: str) -> bool:
    """True once the child's projection has committed and its recompute is under way (it
    keeps retrying the access whose row the test holds)."""
    return (
        CorrectionBatch.objects.filter(pk=batch, state="applied").exists()
        and AccrualRecompute.objects.filter(batch_id=batch, state="pending").exists()
    )


@pytest.mark.django_db(transaction=True)
def test_crash_after_commit_leaves_pending_recomputes_that_resume(incident, run):
    opp = str(incident.opportunity_a.opportunity_id)
    plan = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json
    batch = plan["batch"]
    # The child runs with the project's own settings, which require a reviewer.
    approved = run(
        "approve", "--batch", batch, "--operator", "alice", "--plan-digest", plan["plan_digest"]
    )
    assert approved.code == 0, approved.err
    first = min(a.pk for a in (incident.accesses["w1"], incident.accesses["w2"]))
    expected = {
        a.pk: a.payment_accrued - incident.payment_unit_a.amount
        for a in OpportunityAccess.objects.filter(
            pk__in=[incident.accesses["w1"].pk, incident.accesses["w2"].pk]
        )
    }

    # Another session holds the first access's row FOR SHARE: the projection, which only
    # shares it (a suspension must not change under it), commits; then the recompute cannot
    # update the row (it retries, never blocks), where we kill it as a crash would.
    holder = connection.get_new_connection(connection.get_connection_params())
    holder.autocommit = False
    holding = holder.cursor()
    holding.execute("SELECT id FROM opportunity_opportunityaccess WHERE id = %s FOR SHARE", [first])
    env = {**os.environ, "DATABASE_NAME": connection.settings_dict["NAME"]}
    child = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "corrections",
            "apply",
            "--batch",
            batch,
            "--operator",
            "ledger-test",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not _committed_and_recomputing(batch):
            assert child.poll() is None, "apply finished though the access row was held"
            assert time.monotonic() < deadline, "apply never reached the recompute"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        holder.rollback()
        holder.close()

    assert CorrectionBatch.objects.get(pk=batch).state == "applied"
    assert CorrectionEvent.objects.filter(batch_id=batch).count() == 6
    assert AccrualRecompute.objects.filter(batch_id=batch, state="pending").count() == 2

    resumed = run("recompute", "--pending")
    assert resumed.code == 0, resumed.err
    assert AccrualRecompute.objects.filter(state="pending").count() == 0
    for access in OpportunityAccess.objects.filter(pk__in=expected):
        assert access.payment_accrued == expected[access.pk]
    testing.assert_events_match_state()


@pytest.mark.django_db(transaction=True)
def test_transactional_tests_can_flush_the_ledger(incident, run):
    """Django flushes after this test; the flush command lifts only TRUNCATE guards."""
    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    assert run("apply", "--batch", batch).code == 0
    assert CorrectionEvent.objects.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_correctionevent SET to_status = 'approved'",
        "DELETE FROM ledger_correctionevent",
        "TRUNCATE ledger_correctionevent CASCADE",
        "UPDATE ledger_correctionbatch SET reason = 'rewritten'",
        "DELETE FROM ledger_correctionbatch",
        "UPDATE ledger_accrualrecompute SET accrual_before = 0",
        "DELETE FROM ledger_plannedchange",
    ],
)
def test_raw_sql_cannot_rewrite_history(incident, run, sql):
    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    assert run("apply", "--batch", batch).code == 0
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)


def test_assert_append_only_helper(incident, corrections_ledger, run):
    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    run("apply", "--batch", batch)
    corrections_ledger.assert_append_only()


def test_batch_state_machine_is_enforced_by_the_database(incident, run):
    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    with pytest.raises(DatabaseError), transaction.atomic():
        CorrectionBatch.objects.filter(pk=batch).update(state="undone")
    assert run("discard", "--batch", batch).code == 0
    with pytest.raises(DatabaseError), transaction.atomic():
        CorrectionBatch.objects.filter(pk=batch).update(state="applied")
    assert run("apply", "--batch", batch).code == 4  # wrong state: discarded


def test_an_event_is_inverted_at_most_once_by_constraint(incident, run):
    from ledger.models import CorrectionEvent

    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    run("apply", "--batch", batch)
    assert run("undo", "--batch", batch, "--reason", "y").code == 0
    again = run("undo", "--batch", batch, "--reason", "again")
    assert again.code == 4 and "only an applied batch can be undone" in again.err
    inverse = CorrectionEvent.objects.filter(inverts__batch_id=batch).first()
    twin = {
        f.attname: getattr(inverse, f.attname)
        for f in CorrectionEvent._meta.fields
        if f.attname not in ("id", "hash")
    }
    with pytest.raises(DatabaseError), transaction.atomic():
        CorrectionEvent.objects.create(**twin, hash="f" * 64)


def test_planned_changes_are_frozen_once_the_batch_leaves_planned(incident, run):
    from ledger.models import PlannedChange

    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    change = PlannedChange.objects.filter(batch_id=batch).first()
    with transaction.atomic():  # still planned: the database allows it…
        PlannedChange.objects.filter(pk=change.pk).update(suspended=not change.suspended)
        refused = run("apply", "--batch", batch)  # …and apply refuses the altered plan
        assert refused.code == 4 and "no longer match its plan digest" in refused.err
        transaction.set_rollback(True)
    assert run("apply", "--batch", batch).code == 0
    with pytest.raises(DatabaseError), transaction.atomic():
        PlannedChange.objects.filter(pk=change.pk).update(to_status="approved")
    with pytest.raises(DatabaseError), transaction.atomic():
        PlannedChange.objects.create(
            batch_id=batch, entity_kind="visit", entity_id=1, opportunity_id=1,
            from_status="approved", to_status="over_limit",
        )  # fmt: skip
