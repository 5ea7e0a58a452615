"""The core scenarios on the path production runs: outside any test transaction.

Most tests run inside the test's own transaction, where apply and undo take their nested
(savepoint) branch. Here every test is transactional, so each write is a transaction of its
own, committed, with its locks released at commit — as a ``manage.py corrections`` process or
a Celery task runs it. Each test first checks that it really is outside a transaction.

The other transactional scenarios: a crash between commit and recompute
(``test_crash_and_guards.py``), the race between a plan's check and the apply's locks, busy
recomputes and an unreachable lock backend (``test_money_safe_apply.py``), live traffic
(``test_live_traffic.py``).
"""

from __future__ import annotations

import datetime

import pytest
from django.db import connection

from commcare_connect.opportunity.models import CompletedWork, OpportunityAccess, UserVisit
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import testing
from ledger.models import AccrualRecompute, BatchEntry, CorrectionBatch, CorrectionEvent

from .conftest import ledger_counts

pytestmark = pytest.mark.django_db(transaction=True)
PAID_ON = datetime.datetime(2026, 4, 1, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True)
def _outside_any_transaction():
    assert not connection.in_atomic_block, "this module tests the non-nested path"


def _state(work_ids):
    works = dict(CompletedWork.objects.filter(pk__in=work_ids).values_list("pk", "status"))
    visits = dict(
        UserVisit.objects.filter(completed_work_id__in=work_ids).values_list("pk", "status")
    )
    return works, visits


def _stamps(work_ids):
    return sorted(
        UserVisit.objects.filter(completed_work_id__in=work_ids).values_list(
            "pk", "status", "status_modified_date"
        )
    ) + sorted(
        CompletedWork.objects.filter(pk__in=work_ids).values_list(
            "pk", "status", "status_modified_date"
        )
    )


def _approve(run, plan: dict, reviewer: str = "alice") -> None:
    approved = run(
        "approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
        "--operator", reviewer,
    )  # fmt: skip
    assert approved.code == 0, approved.err


def test_plan_approve_apply_then_undo_planned_approved_and_applied(incident, run, settings):
    settings.LEDGER_REQUIRE_APPROVAL = True
    opp = str(incident.opportunity_a.opportunity_id)
    w1, w2 = incident.accesses["w1"], incident.accesses["w2"]
    over_cap = [incident.over_cap_work_ids["w1"], incident.over_cap_work_ids["w2"]]
    amount = incident.payment_unit_a.amount
    before = {a.pk: a.payment_accrued for a in (w1, w2)}
    stamps_before = _stamps(over_cap)

    plan = run("plan", "over-cap", "--opportunity", opp, "--reason", "CI-639", "--json").json
    assert plan["totals"]["works"] == 2
    _approve(run, plan)
    applied = run("apply", "--batch", plan["batch"], "--operator", "bob", "--json")
    assert applied.code == 0, applied.err
    assert (applied.json["events"], applied.json["pending_recomputes"]) == (6, 0)
    works, visits = _state(over_cap)
    assert set(works.values()) == {"over_limit"}
    assert set(visits.values()) - {"trial"} == {"over_limit"}
    for access in (w1, w2):
        access.refresh_from_db()
        assert access.payment_accrued == before[access.pk] - amount
    assert not AccrualRecompute.objects.filter(state="pending").exists()

    again = run("plan", "over-cap", "--opportunity", opp, "--reason", "again", "--json")
    assert again.json["batch"] is None

    undo = run("plan", "undo", "--batch", plan["batch"], "--reason", "rehearsal", "--json")
    assert undo.code == 0, undo.err
    assert {a["access_id"]: a["worker_accrual_change"] for a in undo.json["accesses"]} == {
        w1.pk: amount,
        w2.pk: amount,
    }
    _approve(run, undo.json, reviewer="carol")
    undone = run("apply", "--batch", undo.json["batch"], "--operator", "bob", "--json")
    assert undone.code == 0, undone.err
    assert (undone.json["action"], undone.json["reverted_state"]) == ("undo", "undone")
    assert all(a["matches"] for a in undone.json["accesses"])
    assert _stamps(over_cap) == stamps_before
    assert {
        a.pk: a.payment_accrued for a in OpportunityAccess.objects.filter(pk__in=before)
    } == before
    testing.assert_batch_reverted(plan["batch"])
    testing.assert_events_match_state()
    assert run("verify").code == 0


def test_skip_conflicts_then_a_partial_undo_and_the_rest_later(host, run):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, org_amount=10, required=2)
    access = host.access(opp, caps={unit: 1})
    works = [host.approved_work(access, unit) for _ in range(4)]
    update_payment_accrued_for_user(access, incremental=False)

    plan = run("plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap",
               "--json").json  # fmt: skip
    assert plan["totals"]["works"] == 3
    # A live submission adds a visit to the last planned work before the apply.
    host.visit(works[3], unit.required[0])
    counts = ledger_counts()
    refused = run("apply", "--batch", plan["batch"])
    assert refused.code == 5 and ledger_counts() == counts

    applied = run("apply", "--batch", plan["batch"], "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert applied.json["works"] == 2
    assert {c["completed_work_id"] for c in applied.json["skipped_conflicts"]} == {works[3].pk}
    assert [CompletedWork.objects.get(pk=w.pk).status for w in works] == [
        "approved", "over_limit", "over_limit", "approved",
    ]  # fmt: skip

    # Someone edits a flipped visit after the apply: the undo skips its unit and leaves the
    # batch partially undone; once the edit is reverted, undoing again inverts the rest.
    edited = UserVisit.objects.filter(completed_work=works[1]).order_by("pk").first()
    UserVisit.objects.filter(pk=edited.pk).update(status="approved")
    partial = run("undo", "--batch", plan["batch"], "--reason", "r", "--skip-conflicts", "--json")
    assert partial.code == 0, partial.err
    assert partial.json["reverted_state"] == "partially_undone"
    assert {c["completed_work_id"] for c in partial.json["skipped_conflicts"]} == {works[1].pk}
    assert CompletedWork.objects.get(pk=works[2].pk).status == "approved"
    UserVisit.objects.filter(pk=edited.pk).update(status="over_limit")
    rest = run("undo", "--batch", plan["batch"], "--reason", "the rest", "--json")
    assert rest.code == 0, rest.err
    assert rest.json["reverted_state"] == "undone"
    assert [CompletedWork.objects.get(pk=w.pk).status for w in works] == ["approved"] * 4
    testing.assert_batch_reverted(plan["batch"])
    testing.assert_events_match_state()


def test_a_plan_gone_stale_is_refused_then_skipped_on_request(host, run):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, org_amount=10, required=1)
    access = host.access(opp, caps={unit: 1})
    works = [host.approved_work(access, unit) for _ in range(3)]
    update_payment_accrued_for_user(access, incremental=False)
    plan = run("plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap",
               "--json").json  # fmt: skip
    CompletedWork.objects.filter(pk=works[2].pk).update(payment_date=PAID_ON)
    counts = ledger_counts()

    stale = run("apply", "--batch", plan["batch"], "--json")
    assert stale.code == 4, stale.err
    assert stale.json["error"] == "wrong_state"
    assert [(c["entity_id"], c["what"]) for c in stale.json["conflicts"]] == [
        (works[2].pk, "payment_date")
    ]
    assert ledger_counts() == counts

    applied = run("apply", "--batch", plan["batch"], "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert applied.json["works"] == 1
    batch = CorrectionBatch.objects.get(pk=plan["batch"])
    assert [c["what"] for c in batch.skipped_conflicts] == ["payment_date"]
    assert CompletedWork.objects.get(pk=works[2].pk).status == "approved"
    steps = BatchEntry.objects.filter(batch=batch).values_list("action", flat=True)
    assert list(steps) == ["plan", "apply"]
    assert CorrectionEvent.objects.filter(batch=batch).count() == 2
    assert run("verify").code == 0
