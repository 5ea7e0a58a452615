"""Random sequences of plan, apply, undo, outside edits and submissions keep the invariants."""

import random

import pytest

from commcare_connect.opportunity.models import CompletedWork, OpportunityAccess, UserVisit
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import testing
from ledger.models import AccrualRecompute, CorrectionBatch
from ledger.verify import run_checks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_keep_invariants(make_capped_access, run, seed):
    rng = random.Random(seed)
    accesses = [
        make_capped_access(
            works=rng.randint(3, 9), cap=rng.randint(1, 5), deliver_units=rng.randint(1, 3)
        )
        for _ in range(3)
    ]
    opps = [str(a.opportunity.opportunity_id) for a in accesses]
    edited: set[tuple[str, int]] = set()
    for _ in range(12):
        action = rng.choice(["plan_apply", "plan_apply", "undo", "edit", "discard"])
        if action == "plan_apply":
            chosen = rng.sample(opps, rng.randint(1, len(opps)))
            args = [x for o in chosen for x in ("--opportunity", o)]
            plan = run("plan", "over-cap", *args, "--reason", "r", "--json")
            assert plan.code == 0, plan.err
            if plan.json["batch"]:
                result = run("apply", "--batch", plan.json["batch"], "--skip-conflicts", "--json")
                assert result.code == 0, result.err
                assert all(a["matches"] for a in result.json["accesses"])
        elif action == "undo":
            applied = list(
                CorrectionBatch.objects.filter(state="applied")
                .exclude(planner="undo")
                .values_list("pk", flat=True)
            )
            if applied:
                batch = str(rng.choice(applied))
                result = run("undo", "--batch", batch, "--reason", "u", "--json")
                if result.code == 0:
                    testing.assert_batch_reverted(batch)
                else:
                    assert "no longer as the batch expects" in result.err
        elif action == "edit":
            # Someone outside the ledger re-approves a work and its visits (a PM override).
            work = (
                CompletedWork.objects.filter(opportunity_access__in=accesses, status="over_limit")
                .order_by("?")
                .first()
            )
            if work:
                edited.add(("completed_work", work.pk))
                edited.update(
                    ("visit", pk)
                    for pk in UserVisit.objects.filter(completed_work=work).values_list(
                        "pk", flat=True
                    )
                )
                UserVisit.objects.filter(completed_work=work).update(status="approved")
                CompletedWork.objects.filter(pk=work.pk).update(status="approved")
                update_payment_accrued_for_user(work.opportunity_access, incremental=False)
        elif action == "discard":
            planned = CorrectionBatch.objects.filter(state="planned").first()
            if planned:
                assert run("discard", "--batch", str(planned.pk)).code == 0
        assert not AccrualRecompute.objects.filter(state="pending").exists()

    # History stays whole; accruals are what the host's own recompute gives.
    report = run_checks(["chain", "recomputes", "batches"])
    assert report.ok, report
    # Continuity gaps and drift are allowed only where someone edited outside the ledger.
    report = run_checks(["continuity", "drift"])
    assert {(p.entity_kind, p.entity_id) for p in report.problems} <= edited
    if not edited:
        assert report.ok, report
    for access in OpportunityAccess.objects.filter(pk__in=[a.pk for a in accesses]):
        accrued = access.payment_accrued
        update_payment_accrued_for_user(access, incremental=False)
        access.refresh_from_db()
        assert access.payment_accrued == accrued
