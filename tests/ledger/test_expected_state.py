"""Compare-and-set compares the whole expected state of a unit, not one column.

Each test stages a way real data changes between a plan and its apply (or between an apply and
its undo) and checks that the ledger refuses — naming what changed and who owns it — or skips
exactly the affected units on request, and that events and state agree afterwards.
"""

from __future__ import annotations

from commcare_connect.opportunity.models import (
    CompletedWork,
    OpportunityAccess,
    UserVisit,
)
from ledger import testing
from ledger.models import AccrualRecompute, CorrectionBatch, CorrectionEvent, PlannedChange

from .conftest import ledger_counts, settle


def _ids_file(tmp_path, name: str, ids) -> str:
    path = tmp_path / name
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def _visits_of(work) -> list[int]:
    return list(
        UserVisit.objects.filter(completed_work=work).order_by("pk").values_list("pk", flat=True)
    )


def _plan_visits(run, tmp_path, work, to: str = "over_limit") -> dict:
    ids = _ids_file(tmp_path, f"visits-{work.pk}-{to}.txt", _visits_of(work))
    result = run("plan", "visits", "--visit-ids", ids, "--to", to, "--reason", f"to {to}", "--json")
    assert result.code == 0, result.err
    return result.json


def test_undo_of_an_older_batch_is_refused_while_a_newer_one_owns_the_entity(capped, run, tmp_path):
    _, _, access, works = capped
    target = works[0]
    first = _plan_visits(run, tmp_path, target, "over_limit")["batch"]
    assert run("apply", "--batch", first).code == 0
    second = _plan_visits(run, tmp_path, target, "approved")["batch"]
    assert run("apply", "--batch", second).code == 0
    third = _plan_visits(run, tmp_path, target, "over_limit")["batch"]
    assert run("apply", "--batch", third).code == 0

    counts = ledger_counts()
    refused = run("undo", "--batch", first, "--reason", "older batch")
    assert refused.code == 5
    assert "latest ledger event" in refused.err
    assert f"batch {third} owns its current state" in refused.err
    assert ledger_counts() == counts
    assert CompletedWork.objects.get(pk=target.pk).status == "over_limit"

    # Skipping every unit would undo nothing: refused, and no empty undo batch is recorded.
    skipped = run("undo", "--batch", first, "--reason", "older batch", "--skip-conflicts")
    assert skipped.code == 5, skipped.err
    assert "every unit of the undo of batch" in skipped.err
    assert ledger_counts() == counts
    assert CorrectionBatch.objects.get(pk=first).state == "applied"  # nothing of it inverted
    assert CompletedWork.objects.get(pk=target.pk).status == "over_limit"

    # The newest batch can still be undone, and then the one before it.
    assert run("undo", "--batch", third, "--reason", "newest first").code == 0
    assert run("undo", "--batch", second, "--reason", "then this").code == 0
    assert CompletedWork.objects.get(pk=target.pk).status == "over_limit"
    assert run("undo", "--batch", first, "--reason", "and the first").code == 0
    assert CompletedWork.objects.get(pk=target.pk).status == "approved"
    testing.assert_events_match_state()


def test_a_visit_moved_to_another_work_is_a_conflict(capped, run, tmp_path):
    _, unit, access, works = capped
    plan = _plan_visits(run, tmp_path, works[0])
    moved = _visits_of(works[0])[0]
    UserVisit.objects.filter(pk=moved).update(completed_work=works[1])

    counts = ledger_counts()
    result = run("apply", "--batch", plan["batch"])
    assert result.code == 5
    assert (
        f"visit {moved}: completed work expected {works[0].pk}, found {works[1].pk}" in result.err
    )
    assert ledger_counts() == counts

    # Skipping its only unit would apply nothing: refused, the batch stays planned.
    skipped = run("apply", "--batch", plan["batch"], "--skip-conflicts", "--json")
    assert skipped.code == 5, skipped.err
    assert skipped.json["error"] == "conflict"
    assert {c["what"] for c in skipped.json["conflicts"]} >= {"completed_work"}
    assert ledger_counts() == counts
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "planned"
    testing.assert_events_match_state()


def test_a_visit_landing_on_a_planned_work_is_a_conflict(host, capped, run):
    opp, unit, access, works = capped
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap", "--json"
    ).json
    planned = PlannedChange.objects.filter(
        batch_id=plan["batch"], entity_kind="completed_work", excluded=""
    ).values_list("entity_id", flat=True)
    assert set(planned) == {works[2].pk, works[3].pk}
    assert {a["works"] for a in plan["accesses"]} == {2}
    # A live submission adds an approved visit to one of the planned works.
    late = host.visit(works[3], unit.required[0])

    result = run("apply", "--batch", plan["batch"])
    assert result.code == 5
    assert f"completed_work {works[3].pk}: visits held expected" in result.err

    applied = run("apply", "--batch", plan["batch"], "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert applied.json["works"] == 1
    assert CompletedWork.objects.get(pk=works[2].pk).status == "over_limit"
    assert CompletedWork.objects.get(pk=works[3].pk).status == "approved"
    assert UserVisit.objects.get(pk=late.pk).status == "approved"
    flipped = set(
        CorrectionEvent.objects.filter(
            batch_id=plan["batch"], entity_kind="completed_work"
        ).values_list("entity_id", flat=True)
    )
    assert flipped == {works[2].pk}  # of the two planned works, the one that still held
    assert run("verify").code == 0
    testing.assert_events_match_state()


def test_a_work_the_host_would_not_keep_is_left_out_and_verify_stays_clean(host, run):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, required=2)
    access = host.access(opp, caps={unit: 1})
    host.approved_work(access, unit)
    kept = host.approved_work(access, unit)
    mixed = host.work(access, unit, visits=unit.required[:1], status="approved")
    host.visit(mixed, unit.required[1], status="approved")
    settle(access)
    # A reviewer rejects one visit of an over-cap work without recomputing: the work still
    # says approved, but the host's next recompute will make it rejected.
    rejected = UserVisit.objects.filter(completed_work=mixed).order_by("pk").last()
    UserVisit.objects.filter(pk=rejected.pk).update(status="rejected", reason="blurred photo")

    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap", "--json"
    ).json
    held = {e["reason"]: e["completed_work_ids"] for e in plan["exclusions"]}
    assert held == {"would_not_hold": [mixed.pk]}
    assert plan["totals"]["works"] == 1

    applied = run("apply", "--batch", plan["batch"], "--json")
    assert applied.code == 0, applied.err
    assert all(a["matches"] for a in applied.json["accesses"])
    assert CompletedWork.objects.get(pk=kept.pk).status == "over_limit"
    verified = run("verify")
    assert verified.code == 0, verified.out


def test_a_stale_over_cap_plan_is_refused(capped, run, tmp_path):
    opp, _, access, works = capped
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap", "--json"
    ).json
    # Another batch sets a work within the cap over_limit: the next work moves within the cap.
    other = _plan_visits(run, tmp_path, works[0])["batch"]
    assert run("apply", "--batch", other).code == 0

    counts = ledger_counts()
    result = run("apply", "--batch", plan["batch"])
    assert result.code == 4
    assert "stale" in result.err and str(works[2].pk) in result.err
    assert ledger_counts() == counts
    live = CompletedWork.objects.filter(opportunity_access=access).exclude(status="over_limit")
    assert live.count() == 3


def test_visits_without_an_access_still_recompute_the_works_access(capped, run, tmp_path):
    _, _, access, works = capped
    target = works[1]
    UserVisit.objects.filter(completed_work=target).update(opportunity_access=None)
    before = OpportunityAccess.objects.get(pk=access.pk).payment_accrued

    plan = _plan_visits(run, tmp_path, target)
    assert [a["access_id"] for a in plan["accesses"]] == [access.pk]
    assert run("apply", "--batch", plan["batch"]).code == 0
    assert AccrualRecompute.objects.filter(batch_id=plan["batch"], access_id=access.pk).exists()
    assert OpportunityAccess.objects.get(pk=access.pk).payment_accrued == before - 100
    assert set(
        CorrectionEvent.objects.filter(batch_id=plan["batch"]).values_list("access_id", flat=True)
    ) == {access.pk}
    assert run("verify").code == 0


def test_a_partial_undo_leaves_the_rest_to_undo_later(capped, run, tmp_path):
    opp, _, access, works = capped
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap", "--json"
    ).json
    assert run("apply", "--batch", plan["batch"]).code == 0
    # A PM re-approves one of the corrected visits outside the ledger.
    visit = _visits_of(works[3])[0]
    UserVisit.objects.filter(pk=visit).update(status="approved")

    partial = run(
        "undo", "--batch", plan["batch"], "--reason", "undo", "--skip-conflicts", "--json"
    )
    assert partial.code == 0, partial.err
    assert partial.json["reverted_state"] == "partially_undone"
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "partially_undone"
    assert CompletedWork.objects.get(pk=works[2].pk).status == "approved"
    assert CompletedWork.objects.get(pk=works[3].pk).status == "over_limit"

    # Once the outside change is put back, the rest can be undone.
    UserVisit.objects.filter(pk=visit).update(status="over_limit")
    rest = run("undo", "--batch", plan["batch"], "--reason", "the rest", "--json")
    assert rest.code == 0, rest.err
    assert rest.json["reverted_state"] == "undone"
    assert CompletedWork.objects.get(pk=works[3].pk).status == "approved"
    testing.assert_batch_reverted(plan["batch"])
    assert run("verify").code == 0


def test_undo_exits_zero_once_committed_and_reports_accrual_findings(host, capped, run):
    opp, unit, access, works = capped
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "cap", "--json"
    ).json
    assert run("apply", "--batch", plan["batch"]).code == 0
    # Meanwhile the worker earns another unit (outside the ledger, within the new cap).
    host.approved_work(access, unit)
    settle(access)

    undone = run("undo", "--batch", plan["batch"], "--reason", "undo", "--json")
    assert undone.code == 0, undone.err
    assert undone.json["findings"] and f"access {access.pk}" in undone.json["findings"][0]
    text = run("show", "--batch", plan["batch"])
    assert text.code == 0
