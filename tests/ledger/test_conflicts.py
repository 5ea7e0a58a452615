"""Compare-and-set: outside changes make apply and undo refuse, or skip on request."""

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from ledger import testing
from ledger.models import CorrectionBatch

from .conftest import ledger_counts


def _plan_a(incident, run) -> str:
    opp = str(incident.opportunity_a.opportunity_id)
    return run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]


def test_outside_change_between_apply_and_undo_refuses_undo(incident, run):
    batch = _plan_a(incident, run)
    assert run("apply", "--batch", batch).code == 0
    work_id = incident.over_cap_work_ids["w1"]
    visit = UserVisit.objects.filter(completed_work_id=work_id, status="over_limit").first()
    # A PM approves the visit again in the review view, outside the ledger.
    UserVisit.objects.filter(pk=visit.pk).update(status="approved")

    counts = ledger_counts()
    result = run("undo", "--batch", batch, "--reason", "oops")
    assert result.code == 5
    assert "2 entities are no longer as the batch expects" in result.err  # the visit and its work
    assert ledger_counts() == counts
    assert CorrectionBatch.objects.get(pk=batch).state == "applied"
    assert CompletedWork.objects.get(pk=work_id).status == "over_limit"

    as_json = run("undo", "--batch", batch, "--reason", "oops", "--json")
    assert as_json.code == 5
    assert f"visit {visit.pk}" in as_json.err or str(visit.pk) in as_json.err


def test_conflicts_are_named_entity_by_entity(incident, run):
    batch = _plan_a(incident, run)
    work_id = incident.over_cap_work_ids["w2"]
    CompletedWork.objects.filter(pk=work_id).update(status="rejected")
    result = run("apply", "--batch", batch)
    assert result.code == 5
    assert f"completed_work {work_id}: status expected approved, found rejected" in result.err


def test_skip_conflicts_skips_whole_units_and_records_them(incident, run):
    batch = _plan_a(incident, run)
    skipped_work = incident.over_cap_work_ids["w2"]
    CompletedWork.objects.filter(pk=skipped_work).update(status="rejected")
    result = run("apply", "--batch", batch, "--skip-conflicts", "--json")
    assert result.code == 0, result.err
    assert result.json["works"] == 1 and result.json["visits"] == 2
    assert [c["entity_id"] for c in result.json["skipped_conflicts"]] == [skipped_work]
    stored = CorrectionBatch.objects.get(pk=batch).skipped_conflicts
    assert stored[0]["entity_id"] == skipped_work
    # The skipped work's visits were left alone with it.
    statuses = UserVisit.objects.filter(completed_work_id=skipped_work).values_list("status")
    assert "over_limit" not in {s for (s,) in statuses}
    testing.assert_events_match_state()
