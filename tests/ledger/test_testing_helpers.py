"""The assertions ``ledger.testing`` gives host suites can fail: they read live state, refuse to
pass on nothing, and tell the append-only guard's refusal from any other database error."""

from __future__ import annotations

import uuid

import pgtrigger
import pytest
from django.db import connection

from commcare_connect.opportunity.models import CompletedWork, OpportunityAccess
from ledger import testing
from ledger.models import AccrualRecompute, CorrectionBatch, CorrectionEvent

from .conftest import ledger_counts, one_over_cap, plan_over_cap

EVENT_GUARD = "ledger.CorrectionEvent:ledger_event_append_only"
RECOMPUTE_GUARD = "ledger.AccrualRecompute:ledger_recompute_no_delete"


def _applied_and_undone(host, run) -> tuple[str, OpportunityAccess]:
    opp, access = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    assert run("apply", "--batch", batch).code == 0
    assert run("undo", "--batch", batch, "--reason", "back").code == 0
    return batch, access


def test_batch_reverted_passes_after_a_complete_undo(host, run):
    batch, _ = _applied_and_undone(host, run)
    testing.assert_batch_reverted(batch)


def test_batch_reverted_compares_the_live_accrual_not_recorded_figures(host, run):
    batch, access = _applied_and_undone(host, run)
    # Something moves the worker's accrual after the undo; the ledger's records still agree.
    OpportunityAccess.objects.filter(pk=access.pk).update(payment_accrued=250)
    with pytest.raises(AssertionError, match=f"access {access.pk}: payment_accrued 250 now"):
        testing.assert_batch_reverted(batch)


def test_batch_reverted_compares_live_statuses(host, run):
    batch, access = _applied_and_undone(host, run)
    work = CompletedWork.objects.filter(opportunity_access=access).order_by("-id").first()
    CompletedWork.objects.filter(pk=work.pk).update(status="rejected")
    with pytest.raises(AssertionError, match=f"completed_work {work.pk}: now rejected"):
        testing.assert_batch_reverted(batch)


def test_batch_reverted_refuses_to_pass_without_recompute_rows(host, run):
    batch, _ = _applied_and_undone(host, run)
    # The table's owner (the test database's superuser) may lift the guard to make the case.
    with pgtrigger.ignore(RECOMPUTE_GUARD):
        AccrualRecompute.objects.all().delete()
    with pytest.raises(AssertionError, match="recorded no accrual recompute"):
        testing.assert_batch_reverted(batch)


def test_batch_reverted_refuses_to_pass_without_events(db):
    # A batch the records call undone, with an undo batch, and not one event to compare.
    fields = {"reason": "r", "planned_by": "ledger-test", "plan_digest": "0" * 64}
    batch = CorrectionBatch.objects.create(planner="visit_list", **fields)
    CorrectionBatch.objects.create(planner="undo", reverts=batch, **fields)
    for state in ("applied", "undone"):  # the moves the state guard allows
        CorrectionBatch.objects.filter(pk=batch.pk).update(state=state)
    with pytest.raises(AssertionError, match="has no events"):
        testing.assert_batch_reverted(str(batch.pk))


def test_append_only_passes_on_an_empty_ledger_and_leaves_nothing(db):
    counts = ledger_counts()
    testing.assert_append_only()
    assert ledger_counts() == counts


def test_append_only_tries_update_and_delete_even_without_events(db):
    assert not CorrectionEvent.objects.exists()
    batches = CorrectionBatch.objects.count()
    with (
        pgtrigger.ignore(EVENT_GUARD),
        pytest.raises(AssertionError, match="the database accepted 'UPDATE"),
    ):
        testing.assert_append_only()
    assert not CorrectionEvent.objects.exists()  # the probe went with the rollback
    assert CorrectionBatch.objects.count() == batches


def test_append_only_rolls_back_what_a_missing_guard_let_through(host, run):
    opp, _ = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    assert run("apply", "--batch", batch).code == 0
    events = CorrectionEvent.objects.count()
    with pgtrigger.ignore(EVENT_GUARD), pytest.raises(AssertionError, match="accepted"):
        testing.assert_append_only()
    assert CorrectionEvent.objects.count() == events


def test_append_only_does_not_count_a_permission_error_as_the_guard(host, run):
    opp, _ = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    assert run("apply", "--batch", batch).code == 0
    reader = f"ledger_reader_{uuid.uuid4().hex[:8]}"  # made in the test's transaction
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {reader} NOSUPERUSER NOLOGIN")
        cursor.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}")
        cursor.execute(f"SET ROLE {reader}")
    try:
        with pytest.raises(AssertionError, match="not by the append-only guard: permission"):
            testing.assert_append_only()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
