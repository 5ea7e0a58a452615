"""The original QA plan of the over-cap incident, run through ``./manage.py corrections``."""

from commcare_connect.opportunity.models import CompletedWork, OpportunityAccess, UserVisit
from ledger import testing

from .conftest import ledger_counts


def _state(work_ids):
    works = {
        w.pk: (w.status, w.status_modified_date)
        for w in CompletedWork.objects.filter(pk__in=work_ids)
    }
    visits = {
        v.pk: (v.status, v.status_modified_date)
        for v in UserVisit.objects.filter(completed_work_id__in=work_ids)
    }
    return works, visits


def test_plan_apply_replan_undo(incident, run):
    opp = str(incident.opportunity_a.opportunity_id)
    w1, w2 = incident.accesses["w1"], incident.accesses["w2"]
    over_cap = [incident.over_cap_work_ids["w1"], incident.over_cap_work_ids["w2"]]
    amount = incident.payment_unit_a.amount
    org_amount = incident.payment_unit_a.org_amount
    accrual_before = {a.pk: a.payment_accrued for a in (w1, w2)}
    state_before = _state(over_cap)

    # Plan: exactly the two over-cap works across two accesses, priced.
    plan = run("plan", "over-cap", "--opportunity", opp, "--reason", "CI-639", "--json")
    assert plan.code == 0, plan.err
    report = plan.json
    assert report["state"] == "planned"
    assert [(a["access_id"], a["works"], a["visits"]) for a in report["accesses"]] == [
        (w1.pk, 1, 2),
        (w2.pk, 1, 2),
    ]
    for line in report["accesses"]:
        assert line["worker_accrual_change"] == -amount
        assert line["org_accrual_change"] == -org_amount
        assert line["worker_accrual_change_usd"] == f"{-amount}.00"
        assert line["projected_accrual"] == accrual_before[line["access_id"]] - amount
    assert report["totals"]["works"] == 2 and report["totals"]["visits"] == 4
    batch = report["batch"]

    # Apply: those works and all their visits flip; accruals drop by exactly the projection.
    applied = run("apply", "--batch", batch, "--operator", "bob", "--json")
    assert applied.code == 0, applied.err
    assert applied.json["state"] == "applied" and applied.json["events"] == 6
    works, visits = _state(over_cap)
    assert {s for s, _ in works.values()} == {"over_limit"}
    assert {s for s, _ in visits.values()} - {"trial"} == {"over_limit"}
    for outcome in applied.json["accesses"]:
        assert outcome["matches"] is True
    for access in (w1, w2):
        access.refresh_from_db()
        assert access.payment_accrued == accrual_before[access.pk] - amount
    testing.assert_events_match_state()

    # Planning again finds nothing and creates no batch.
    counts = ledger_counts()
    again = run("plan", "over-cap", "--opportunity", opp, "--reason", "again", "--json")
    assert again.code == 0
    assert again.json["batch"] is None and again.json["totals"]["works"] == 0
    assert ledger_counts() == counts

    # Undo restores statuses, dates and accruals exactly.
    undone = run("undo", "--batch", batch, "--reason", "rehearsal", "--json")
    assert undone.code == 0, undone.err
    assert undone.json["reverts"] == batch
    assert all(a["matches"] for a in undone.json["accesses"])
    assert _state(over_cap) == state_before
    assert {
        a.pk: a.payment_accrued for a in OpportunityAccess.objects.filter(pk__in=[w1.pk, w2.pk])
    } == accrual_before
    testing.assert_batch_reverted(batch)
    testing.assert_events_match_state()


def test_human_plan_names_batch_and_totals(incident, run):
    opp = str(incident.opportunity_a.opportunity_id)
    plan = run("plan", "over-cap", "--opportunity", opp, "--reason", "CI-639")
    assert plan.code == 0
    assert "Planned batch" in plan.out
    assert "Totals: 2 works and 4 visits across 2 accesses" in plan.out


def test_apply_twice_and_undo_twice_are_refused(incident, run):
    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    counts = ledger_counts()
    early = run("undo", "--batch", batch, "--reason", "too early")
    assert early.code == 4 and "only an applied batch can be undone" in early.err
    assert ledger_counts() == counts
    assert run("apply", "--batch", batch).code == 0
    counts = ledger_counts()
    second = run("apply", "--batch", batch)
    assert second.code == 4 and "only a planned batch" in second.err
    assert ledger_counts() == counts
    assert run("undo", "--batch", batch, "--reason", "ok").code == 0
    counts = ledger_counts()
    twice = run("undo", "--batch", batch, "--reason", "again")
    assert twice.code == 4 and "undone" in twice.err
    assert ledger_counts() == counts
