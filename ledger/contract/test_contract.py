"""The ledger's promises, checked against the host's own models and accrual code."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger import host, testing
from ledger.models import CorrectionBatch

KES_RATE = Decimal("129.5")


def _over_cap_world(world, *, code="USD", rate=None, amount=100, org_amount=20):
    """Two workers over a cap of 2 (4 and 3 works), one at the cap, one suspended over it."""
    opp = world.opportunity(code, rate)
    unit = world.unit(opp, amount=amount, org_amount=org_amount, forms=2)
    over_a = world.access(opp, {unit: 2})
    over_b = world.access(opp, {unit: 2})
    at_cap = world.access(opp, {unit: 2})
    suspended = world.access(opp, {unit: 1}, suspended=True)
    for access, works in ((over_a, 4), (over_b, 3), (at_cap, 2), (suspended, 2)):
        for _ in range(works):
            world.work(access, unit)
    world.settle(over_a, over_b, at_cap, suspended)
    return opp, unit, (over_a, over_b, at_cap, suspended)


def _plan(corrections, opp, *extra):
    result = corrections(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id),
        "--reason", "contract: over-cap", "--json", *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    return result.json


def _cells(accesses):
    """Every cell a correction may touch, for the accesses' works and visits."""
    ids = [a.pk for a in accesses]
    works = {
        row[0]: row[1:]
        for row in host.CompletedWork.objects.filter(opportunity_access_id__in=ids).values_list(
            "pk", "status", "status_modified_date", "reason", "saved_completed_count",
            "saved_approved_count", "saved_payment_accrued", "saved_payment_accrued_usd",
            "saved_org_payment_accrued", "saved_org_payment_accrued_usd",
        )
    }  # fmt: skip
    visits = {
        row[0]: row[1:]
        for row in host.UserVisit.objects.filter(
            completed_work__opportunity_access_id__in=ids
        ).values_list("pk", "status", "status_modified_date", "review_status")
    }
    accruals = dict(
        host.OpportunityAccess.objects.filter(pk__in=ids).values_list("pk", "payment_accrued")
    )
    return works, visits, accruals


@pytest.mark.parametrize(
    "code, rate, amount",
    [("USD", None, 100), ("KES", KES_RATE, 1300)],
    ids=["usd", "kes"],
)
def test_priced_plan_equals_the_hosts_own_recompute(world, corrections, apply, code, rate, amount):
    opp, unit, (over_a, over_b, at_cap, suspended) = _over_cap_world(
        world, code=code, rate=rate, amount=amount
    )
    before = {a.pk: a.payment_accrued for a in (over_a, over_b, at_cap, suspended)}
    assert before[over_a.pk] == 4 * amount  # the host accrued every work

    plan = _plan(corrections, opp)
    lines = {line["access_id"]: line for line in plan["accesses"]}
    assert set(lines) == {over_a.pk, over_b.pk, suspended.pk}
    for access_id, line in lines.items():
        assert line["currency"] == code
        assert line["accrual_now"] == before[access_id]
    assert lines[over_a.pk]["works"] == 2 and lines[over_a.pk]["visits"] == 4
    assert lines[over_a.pk]["worker_accrual_change"] == -2 * amount
    assert lines[suspended.pk]["suspended"] is True
    assert plan["notes"], "the plan says suspended accesses are recomputed"

    applied = apply(plan, "--json")
    assert applied.code == 0, applied.err
    for access in (over_a, over_b, suspended):
        access.refresh_from_db()
        assert access.payment_accrued == lines[access.pk]["projected_accrual"]
        # The host's own recompute, run again, agrees and moves nothing.
        assert host.recompute_access(access.pk) == access.payment_accrued
    at_cap.refresh_from_db()
    assert at_cap.payment_accrued == before[at_cap.pk]


def test_apply_then_verify_is_clean(world, corrections, apply):
    opp, _, _ = _over_cap_world(world)
    plan = _plan(corrections, opp)
    assert apply(plan).code == 0
    verified = corrections("verify", "--json")
    assert verified.code == 0, verified.out + verified.err
    testing.assert_events_match_state()


def test_undo_restores_every_cell(world, corrections, apply, undo):
    opp, _, accesses = _over_cap_world(world, code="KES", rate=KES_RATE, amount=1300)
    before = _cells(accesses)
    plan = _plan(corrections, opp)
    assert apply(plan).code == 0
    assert _cells(accesses) != before

    undone = undo(plan["batch"], "contract: undo")
    assert undone.code == 0, undone.err
    assert _cells(accesses) == before
    testing.assert_batch_reverted(plan["batch"])
    testing.assert_events_match_state()
    assert corrections("verify").code == 0


def test_history_is_append_only_in_the_database(world, corrections, apply):
    opp, _, _ = _over_cap_world(world)
    plan = _plan(corrections, opp)
    assert apply(plan).code == 0
    testing.assert_append_only()


def test_a_list_naming_part_of_a_work_is_refused_or_expanded(world, corrections, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, forms=2)
    access = world.access(opp, {unit: 5})
    work = world.work(access, unit)
    world.settle(access)
    first, second = host.UserVisit.objects.filter(completed_work=work).order_by("pk")
    ids = tmp_path / "xforms.txt"
    ids.write_text(first.xform_id + "\n")
    batches = CorrectionBatch.objects.count()

    refused = corrections(
        "plan", "visits", "--xform-ids", str(ids), "--reason", "contract", "--json"
    )
    assert refused.code == 3
    assert f"work {work.pk}" in refused.err and second.xform_id in refused.err
    assert CorrectionBatch.objects.count() == batches  # nothing planned

    expanded = corrections(
        "plan", "visits", "--xform-ids", str(ids), "--expand", "--reason", "contract", "--json"
    )
    assert expanded.code == 0, expanded.err
    assert expanded.json["totals"]["works"] == 1 and expanded.json["totals"]["visits"] == 2


def test_exclusions_are_reported_and_left_alone(world, corrections, apply, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp)
    access = world.access(opp, {unit: 1})
    world.work(access, unit)  # within the cap
    paid = world.work(access, unit)
    overridden = world.work(access, unit)
    rejected = world.work(access, unit, visit_status="rejected")
    flipped = world.work(access, unit)
    world.settle(access)
    host.CompletedWork.objects.filter(pk=paid.pk).update(payment_date=timezone.now())
    exclude = tmp_path / "overrides.txt"
    exclude.write_text(f"{overridden.pk}\n")

    plan = _plan(corrections, opp, "--exclude", str(exclude))
    reasons = {e["reason"]: e["completed_work_ids"] for e in plan["exclusions"]}
    assert reasons == {
        "paid": [paid.pk],
        "operator_excluded": [overridden.pk],
        "rejected": [rejected.pk],
    }
    assert plan["totals"]["works"] == 1
    assert apply(plan).code == 0
    statuses = dict(
        host.CompletedWork.objects.filter(
            pk__in=[paid.pk, overridden.pk, rejected.pk, flipped.pk]
        ).values_list("pk", "status")
    )
    assert statuses == {
        paid.pk: "approved",
        overridden.pk: "approved",
        rejected.pk: "rejected",
        flipped.pk: "over_limit",
    }


def test_a_list_accounts_for_every_id_it_was_given(world, corrections, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp)
    access = world.access(opp, {unit: 5})
    target = world.work(access, unit)
    already = world.work(access, unit, visit_status="over_limit")
    world.settle(access)
    trial = world.visit(target, unit.required[0], status="trial")
    host.UserVisit.objects.filter(pk=trial.pk).update(completed_work=None)
    (target_visit,) = host.UserVisit.objects.filter(completed_work=target)
    (already_visit,) = host.UserVisit.objects.filter(completed_work=already)
    ids = tmp_path / "xforms.txt"
    ids.write_text(
        "\n".join([target_visit.xform_id, target_visit.xform_id, trial.xform_id,
                   already_visit.xform_id]) + "\n"
    )  # fmt: skip

    plan = corrections("plan", "visits", "--xform-ids", str(ids), "--reason", "contract", "--json")
    assert plan.code == 0, plan.err
    report = plan.json
    assert report["duplicate_entries"] == [target_visit.xform_id]
    excluded = {e["reason"]: e["visit_ids"] for e in report["exclusions"]}
    assert excluded == {"trial": [trial.pk], "already_target": [already_visit.pk]}
    assert report["totals"]["visits"] == 1 and report["totals"]["works"] == 1


def test_four_eyes_a_plan_is_applied_only_after_someone_else_approves_it(
    world, corrections, people, settings
):
    settings.LEDGER_REQUIRE_APPROVAL = True
    planner, reviewer = people
    opp, _, _ = _over_cap_world(world)
    plan = _plan(corrections, opp)
    refused = corrections("apply", "--batch", plan["batch"])
    assert refused.code == 4 and "has not been approved" in refused.err
    own = corrections(
        "approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
        "--operator", planner,
    )  # fmt: skip
    assert own.code == 7 and "someone else must approve" in own.err
    approved = corrections(
        "approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
        "--operator", reviewer,
    )  # fmt: skip
    assert approved.code == 0, approved.err
    assert corrections("apply", "--batch", plan["batch"]).code == 0
    batch = CorrectionBatch.objects.get(pk=plan["batch"])
    assert (batch.planned_by, batch.approved_by, batch.applied_by) == (planner, reviewer, planner)


def test_verify_holds_the_record_after_apply_and_undo(world, corrections, apply, undo):
    opp, _, _ = _over_cap_world(world)
    plan = _plan(corrections, opp)
    assert apply(plan).code == 0
    assert undo(plan["batch"], "contract").code == 0
    verified = corrections("verify", "--json")
    assert verified.code == 0, verified.out
    checks = {c["name"] for c in verified.json["checks"]}
    assert {"chain", "lifecycle", "plans", "accruals", "triggers"} <= checks


def test_pricing_is_refused_without_a_stored_exchange_rate(world, corrections, tmp_path):
    """Re-approving work is priced at today's rate; with none stored on or before today the
    host would fetch one over the network in the middle of the dry run: refused instead."""
    world.rate("XOF", datetime.date(2099, 1, 1), Decimal(600))  # a rate, but not yet in force
    opp = world.opportunity("XOF")
    unit = world.unit(opp, amount=6000, org_amount=600)
    access = world.access(opp, {unit: 5})
    work = world.work(access, unit, status="over_limit", visit_status="over_limit")
    world.settle(access)
    ids = tmp_path / "xforms.txt"
    ids.write_text(
        "\n".join(
            host.UserVisit.objects.filter(completed_work=work).values_list("xform_id", flat=True)
        )
    )
    batches = CorrectionBatch.objects.count()

    refused = corrections(
        "plan", "visits", "--xform-ids", str(ids), "--to", "approved", "--reason", "contract",
        "--json",
    )  # fmt: skip
    assert refused.code == 3, refused.err
    assert "no stored exchange rate for XOF on or before" in refused.err
    assert refused.json["error"] == "bad_input"
    assert CorrectionBatch.objects.count() == batches  # nothing planned
    work.refresh_from_db()
    assert work.status == "over_limit"
