"""Planner rules: counting works not visits, exclusions, suspended accesses, visit lists."""

import pytest

from commcare_connect.opportunity.models import CompletedWork, UserVisit

from .conftest import ledger_counts


def test_two_deliver_units_100_visits_cap_50_flags_nothing(db, run, make_capped_access):
    """100 visits are 50 earned units: at a cap of 50 works nothing is over."""
    access = make_capped_access(works=50, cap=50, deliver_units=2)
    assert UserVisit.objects.filter(opportunity_access=access).count() == 100
    opp = str(access.opportunity.opportunity_id)
    result = run("plan", "over-cap", "--opportunity", opp, "--reason", "check", "--json")
    assert result.code == 0
    assert result.json["batch"] is None
    assert result.json["totals"]["works"] == 0


def test_one_over_the_cap_is_found_in_creation_order(db, run, make_capped_access):
    access = make_capped_access(works=5, cap=3, deliver_units=2)
    opp = str(access.opportunity.opportunity_id)
    report = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json
    works = CompletedWork.objects.filter(opportunity_access=access).order_by("date_created", "id")
    assert report["totals"]["works"] == 2 and report["totals"]["visits"] == 4
    from ledger.models import PlannedChange

    planned = set(
        PlannedChange.objects.filter(
            batch_id=report["batch"], entity_kind="completed_work"
        ).values_list("entity_id", flat=True)
    )
    assert planned == {w.pk for w in works[3:]}


def test_paid_work_excluded_unless_opted_in(incident, run):
    opp = str(incident.opportunity_b.opportunity_id)
    paid_work = incident.paid_over_cap_work_id
    report = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json
    paid = [e for e in report["exclusions"] if e["reason"] == "paid"]
    assert paid and paid[0]["completed_work_ids"] == [paid_work]
    assert incident.paid_access_id not in {a["access_id"] for a in report["accesses"]}

    report = run(
        "plan", "over-cap", "--opportunity", opp, "--reason", "x", "--include-paid", "--json"
    ).json
    assert report["exclusions"] == []
    line = next(a for a in report["accesses"] if a["access_id"] == incident.paid_access_id)
    assert line["paid_to_date"] != "0"
    assert line["currency"] == "KES"


def test_suspended_included_and_flagged_or_skipped(incident, run):
    opp = str(incident.opportunity_b.opportunity_id)
    report = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json
    line = next(a for a in report["accesses"] if a["access_id"] == incident.suspended_access_id)
    assert line["suspended"] is True
    assert report["totals"]["suspended_accesses"] == 1

    report = run(
        "plan", "over-cap", "--opportunity", opp, "--reason", "x", "--skip-suspended", "--json"
    ).json
    assert incident.suspended_access_id not in {a["access_id"] for a in report["accesses"]}
    assert any(e["reason"] == "suspended" for e in report["exclusions"])


def test_operator_exclusion_list(incident, run, tmp_path):
    opp = str(incident.opportunity_a.opportunity_id)
    keep = incident.over_cap_work_ids["w1"]
    exclude = tmp_path / "overrides.txt"
    exclude.write_text(f"# PM override, ticket 12\n{keep}\n")
    report = run(
        "plan", "over-cap", "--opportunity", opp, "--reason", "x", "--exclude", str(exclude),
        "--json",
    ).json  # fmt: skip
    assert report["totals"]["works"] == 1
    assert report["exclusions"][0]["reason"] == "operator_excluded"
    assert report["exclusions"][0]["completed_work_ids"] == [keep]


def test_trial_visits_are_never_flipped(incident, run):
    trial = UserVisit.objects.get(pk=incident.trial_visit_id)
    opp = str(incident.opportunity_a.opportunity_id)
    batch = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]
    assert run("apply", "--batch", batch).code == 0
    trial.refresh_from_db()
    assert trial.status == "trial"


def test_scan_all_reports_without_creating_a_batch(incident, run):
    counts = ledger_counts()
    result = run("plan", "over-cap", "--all", "--json")
    assert result.code == 0
    assert result.json["batch"] is None and result.json["state"] == "report"
    mine = {o["opportunity"]: o for o in result.json["opportunities"]}
    a = mine[str(incident.opportunity_a.opportunity_id)]
    assert (a["accesses"], a["works"], a["visits"]) == (2, 2, 4)
    assert ledger_counts() == counts


class TestVisitList:
    @pytest.fixture
    def work(self, incident):
        work_id = incident.over_cap_work_ids["w2"]
        return work_id, list(
            UserVisit.objects.filter(completed_work_id=work_id)
            .exclude(status="trial")
            .order_by("id")
            .values_list("xform_id", flat=True)
        )

    def test_partial_work_refused_naming_missing_visits(self, work, run, tmp_path):
        work_id, xforms = work
        listing = tmp_path / "xforms.txt"
        listing.write_text(xforms[0] + "\n")
        counts = ledger_counts()
        result = run("plan", "visits", "--xform-ids", str(listing), "--reason", "x")
        assert result.code == 3
        assert f"work {work_id} lacks {xforms[1]}" in result.err
        assert len(result.err.strip().splitlines()) == 1
        assert ledger_counts() == counts

    def test_expand_and_apply_whole_work(self, work, run, tmp_path):
        work_id, xforms = work
        listing = tmp_path / "xforms.txt"
        listing.write_text(xforms[0] + "\n")
        plan = run(
            "plan", "visits", "--xform-ids", str(listing), "--expand", "--reason", "x", "--json"
        )
        assert plan.code == 0, plan.err
        assert plan.json["totals"]["works"] == 1 and plan.json["totals"]["visits"] == 2
        assert run("apply", "--batch", plan.json["batch"]).code == 0
        assert CompletedWork.objects.get(pk=work_id).status == "over_limit"
        statuses = UserVisit.objects.filter(completed_work_id=work_id).values_list("status")
        assert {s for (s,) in statuses} - {"trial"} == {"over_limit"}

    def test_unknown_ids_named_nothing_planned(self, work, run, tmp_path):
        _, xforms = work
        listing = tmp_path / "xforms.txt"
        listing.write_text("\n".join([*xforms, "no-such-form-1", "no-such-form-2"]))
        counts = ledger_counts()
        result = run("plan", "visits", "--xform-ids", str(listing), "--reason", "x")
        assert result.code == 3
        assert "unknown xform ids: no-such-form-1, no-such-form-2" in result.err
        assert ledger_counts() == counts
