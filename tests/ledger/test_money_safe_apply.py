"""Money moves only as reviewed: every assumption of a plan re-checked under the apply's locks,
a committed apply reported as committed, a recompute that one busy worker cannot stop, an
unreachable lock backend refused, and an undo that needs a second person.

The races are made deterministic with a second database connection: it holds the chain head
(the ledger's write lock) while an apply in a child process waits for it, changes the host's
rows, and lets go — so the change lands exactly between the plan and the apply's locks.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import override_settings

from commcare_connect.opportunity.models import (
    CompletedWork,
    OpportunityAccess,
    OpportunityClaimLimit,
    Payment,
    UserVisit,
)
from ledger import testing
from ledger.models import AccrualRecompute, BatchEntry, CorrectionBatch

from .conftest import ledger_counts, plan_over_cap, settle

ROOT = Path(__file__).resolve().parents[2]
PAID_ON = datetime.datetime(2026, 4, 1, tzinfo=datetime.UTC)


def _statuses(works) -> list[str]:
    return [CompletedWork.objects.get(pk=w.pk).status for w in works]


# ---- 1. Re-checked under the locks --------------------------------------------------------


def _waiting_on_a_lock(pid_other_than: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND pid <> %s AND pid <> pg_backend_pid()""",
            [pid_other_than],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_an_edit_landing_between_the_plan_check_and_the_locks_makes_the_plan_stale(capped, run):
    """The stale-plan race: a PM sets W0 over_limit while the apply waits for the ledger's
    lock. Checked before the lock, the apply would flip W2 and W3 and leave the worker one
    live work under a cap of two; checked under it, the plan is stale."""
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    assert plan["totals"]["works"] == 2
    approved = run(
        "approve", "--batch", plan["batch"], "--operator", "alice",
        "--plan-digest", plan["plan_digest"],
    )  # fmt: skip
    assert approved.code == 0, approved.err

    holder = connection.get_new_connection(connection.get_connection_params())
    holder.autocommit = False
    held = holder.cursor()
    held.execute("SELECT pg_backend_pid()")
    holder_pid = held.fetchone()[0]
    held.execute("SELECT id FROM ledger_ledgerhead WHERE id = 1 FOR UPDATE")
    env = {**os.environ, "DATABASE_NAME": connection.settings_dict["NAME"]}
    child = subprocess.Popen(
        [sys.executable, "manage.py", "corrections", "apply", "--batch", plan["batch"],
         "--operator", "ledger-test"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _waiting_on_a_lock(holder_pid):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the apply never waited for the ledger's lock"
            time.sleep(0.05)
        # The apply waits for the head; the PM's edit commits now.
        CompletedWork.objects.filter(pk=works[0].pk).update(status="over_limit")
    finally:
        holder.rollback()
        holder.close()
    out, err = child.communicate(timeout=120)

    assert child.returncode == 4, err
    assert f"completed_work {works[2].pk}: rank expected past the cap, found position 2 of 2" in err
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "planned"
    assert _statuses(works) == ["over_limit", "approved", "approved", "approved"]


def test_work_paid_during_review_makes_the_plan_stale(capped, run):
    """The host pays the worker while finance reviews: flipping the paid works anyway would
    leave an exposure nobody priced."""
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    CompletedWork.objects.filter(pk__in=[works[2].pk, works[3].pk]).update(payment_date=PAID_ON)
    Payment.objects.create(opportunity_access=access, amount=Decimal("400.00"))
    counts = ledger_counts()

    refused = run("apply", "--batch", plan["batch"])
    assert refused.code == 4, refused.err
    assert f"batch {plan['batch']} is stale" in refused.err
    assert f"completed_work {works[2].pk}: paid expected no, found 2026-04-01" in refused.err
    assert "paid to the worker to date expected 0.00, found 400.00" in refused.err
    assert ledger_counts() == counts
    assert _statuses(works)[2:] == ["approved", "approved"]


def test_a_work_paid_during_review_is_skipped_and_recorded_on_request(capped, run):
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    CompletedWork.objects.filter(pk=works[3].pk).update(payment_date=PAID_ON)

    applied = run("apply", "--batch", plan["batch"], "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert applied.json["works"] == 1
    skipped = CorrectionBatch.objects.get(pk=plan["batch"]).skipped_conflicts
    assert [(c["entity_id"], c["what"]) for c in skipped] == [(works[3].pk, "payment_date")]
    assert _statuses(works) == ["approved", "approved", "over_limit", "approved"]
    testing.assert_events_match_state()


def test_a_suspension_since_a_skip_suspended_plan_makes_it_stale(capped, run):
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp, "--skip-suspended")
    assert plan["totals"]["works"] == 2
    OpportunityAccess.objects.filter(pk=access.pk).update(suspended=True)

    refused = run("apply", "--batch", plan["batch"])
    assert refused.code == 4, refused.err
    assert f"completed_work {works[2].pk}: access suspended expected no, found yes" in refused.err
    assert _statuses(works)[2:] == ["approved", "approved"]


def test_a_cap_raised_since_the_plan_is_re_ranked_under_the_locks(capped, run):
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    OpportunityClaimLimit.objects.filter(opportunity_claim__opportunity_access=access).update(
        max_visits=3
    )

    refused = run("apply", "--batch", plan["batch"])
    assert refused.code == 4, refused.err
    assert f"completed_work {works[2].pk}: rank expected past the cap, found position 3 of 3" in (
        refused.err
    )
    applied = run("apply", "--batch", plan["batch"], "--skip-conflicts")
    assert applied.code == 0, applied.err
    assert _statuses(works) == ["approved", "approved", "approved", "over_limit"]


def test_a_listed_work_paid_since_its_plan_is_stale_too(capped, run, tmp_path):
    """The same facts are checked for every planner, not only the over-cap rule."""
    _, _, access, works = capped
    ids = tmp_path / "ids.txt"
    visits = UserVisit.objects.filter(completed_work=works[0]).values_list("pk", flat=True)
    ids.write_text("".join(f"{v}\n" for v in visits))
    plan = run("plan", "visits", "--visit-ids", str(ids), "--reason", "r", "--json")
    assert plan.code == 0, plan.err
    CompletedWork.objects.filter(pk=works[0].pk).update(payment_date=PAID_ON)

    refused = run("apply", "--batch", plan.json["batch"])
    assert refused.code == 4, refused.err
    assert f"completed_work {works[0].pk}: paid expected no" in refused.err


# ---- 2 and 3. Committed means committed; one busy worker delays only itself ---------------


@pytest.fixture
def three_workers(host):
    """Three workers over their cap of one, each with one work to flip."""
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, org_amount=10, required=1)
    accesses = []
    for _ in range(3):
        access = host.access(opp, caps={unit: 1})
        for _ in range(2):
            host.approved_work(access, unit)
        settle(access)
        accesses.append(access)
    return opp, sorted(accesses, key=lambda a: a.pk)


def _hold_accesses(ids) -> object:
    """Another session holding access rows FOR SHARE: the projection (which shares them) goes
    through; the recompute (which updates them) cannot."""
    holder = connection.get_new_connection(connection.get_connection_params())
    holder.autocommit = False
    holder.cursor().execute(
        "SELECT id FROM opportunity_opportunityaccess WHERE id = ANY(%s) FOR SHARE", [list(ids)]
    )
    return holder


@pytest.mark.django_db(transaction=True)
@override_settings(LEDGER_RETRY_SECONDS=1.0, LEDGER_ACCESS_LOCK_WAIT=0.2)
def test_a_committed_apply_is_reported_as_committed_and_busy_workers_delay_only_themselves(
    three_workers, run
):
    opp, accesses = three_workers
    plan = plan_over_cap(run, opp)
    assert plan["totals"]["accesses"] == 3

    holder = _hold_accesses(a.pk for a in accesses)
    try:
        applied = run("apply", "--batch", plan["batch"], "--json")
    finally:
        holder.rollback()
        holder.close()
    # Committed: exit 1 (findings), the report says applied and lists what is pending.
    assert applied.code == 1, applied.err
    assert "3 recomputes pending: the apply of batch" in applied.err
    assert "recompute --pending" in applied.err
    assert "nothing was written" not in applied.err
    assert applied.json["state"] == "applied" and applied.json["events"] == 6
    assert sorted(p["access_id"] for p in applied.json["pending"]) == [a.pk for a in accesses]
    assert all(p["reason"].startswith("busy:") for p in applied.json["pending"])
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "applied"
    assert run("apply", "--batch", plan["batch"]).code == 4  # applied already

    # Live traffic on the first worker only: the other two are recomputed, the first waits.
    holder = _hold_accesses([accesses[0].pk])
    try:
        resumed = run("recompute", "--pending", "--json")
    finally:
        holder.rollback()
        holder.close()
    assert resumed.code == 1, resumed.err
    assert resumed.json["recomputed"] == 2
    assert [p["access_id"] for p in resumed.json["pending"]] == [accesses[0].pk]
    pending = AccrualRecompute.objects.filter(batch_id=plan["batch"], state="pending")
    assert list(pending.values_list("access_id", flat=True)) == [accesses[0].pk]

    finished = run("recompute", "--pending")
    assert finished.code == 0, finished.err
    for access in accesses:
        access.refresh_from_db()
        assert access.payment_accrued == 100
    testing.assert_events_match_state()


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_lock_backend_is_a_one_line_refusal(capped, run):
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    counts = ledger_counts()
    unreachable = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # the discard port: nothing listens
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    }
    with override_settings(
        CACHES=unreachable,
        LEDGER_ACCESS_LOCK="ledger.locks.redis_access_lock",
        LEDGER_RETRY_SECONDS=0.5,
    ):
        refused = run("apply", "--batch", plan["batch"], "--json")
    assert refused.code == 6, refused.err
    # Progress lines (the retries) aside, the refusal is one line, not a driver's traceback.
    [refusal] = [line for line in refused.err.splitlines() if line.startswith("corrections:")]
    assert "Traceback" not in refused.err
    assert "the accrual lock backend (ledger.locks.redis_access_lock) is unreachable" in refusal
    assert refusal.endswith("nothing was written, try again later")
    assert refused.json["error"] == "busy"
    assert ledger_counts() == counts
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "planned"


# ---- 5. Undo is a correction too ----------------------------------------------------------


def test_an_undo_is_planned_priced_approved_by_someone_else_and_then_applied(capped, run, settings):
    settings.LEDGER_REQUIRE_APPROVAL = True
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    assert run(
        "approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
        "--operator", "alice",
    ).code == 0  # fmt: skip
    assert run("apply", "--batch", plan["batch"]).code == 0
    access.refresh_from_db()
    assert access.payment_accrued == 200

    one_step = run("undo", "--batch", plan["batch"], "--reason", "PM approved them")
    assert one_step.code == 4
    assert "plan undo --batch" in one_step.err

    undo = run(
        "plan", "undo", "--batch", plan["batch"], "--reason", "PM approved them", "--json",
        "--operator", "bob",
    )  # fmt: skip
    assert undo.code == 0, undo.err
    u = undo.json
    assert (u["planner"], u["state"], u["scope"]) == ("undo", "planned", {"reverts": plan["batch"]})
    [priced] = u["accesses"]
    # What the undo gives back: the two works' pay, in local currency and in USD.
    assert (priced["works"], priced["visits"]) == (2, 4)
    assert priced["worker_accrual_change"] == 200 and priced["org_accrual_change"] == 20
    assert Decimal(priced["worker_accrual_change_usd"]) == Decimal("200")
    assert priced["projected_accrual"] == 400

    assert run("apply", "--batch", u["batch"]).code == 4  # not approved yet
    own = run("approve", "--batch", u["batch"], "--plan-digest", u["plan_digest"],
              "--operator", "bob")  # fmt: skip
    assert own.code == 7
    shown = run("show", "--batch", u["batch"])
    assert shown.code == 0 and u["plan_digest"][:12] in shown.out
    assert run("approve", "--batch", u["batch"], "--plan-digest", u["plan_digest"],
               "--operator", "carol").code == 0  # fmt: skip

    undone = run("apply", "--batch", u["batch"], "--operator", "bob", "--json")
    assert undone.code == 0, undone.err
    assert (undone.json["action"], undone.json["reverts"]) == ("undo", plan["batch"])
    assert undone.json["reverted_state"] == "undone" and undone.json["events"] == 6
    access.refresh_from_db()
    assert access.payment_accrued == 400
    assert _statuses(works) == ["approved"] * 4
    steps = list(BatchEntry.objects.filter(batch_id=u["batch"]).values_list("action", "actor"))
    assert steps == [("plan", "bob"), ("approve", "carol"), ("apply", "bob")]
    assert BatchEntry.objects.filter(batch_id=plan["batch"], action="undo").count() == 1
    testing.assert_batch_reverted(plan["batch"])
    assert run("verify").code == 0


def test_one_undo_plan_at_a_time_and_a_discarded_one_frees_the_batch(capped, run):
    opp, _, access, works = capped
    plan = plan_over_cap(run, opp)
    assert run("apply", "--batch", plan["batch"]).code == 0
    first = run("plan", "undo", "--batch", plan["batch"], "--reason", "r", "--json")
    assert first.code == 0, first.err
    second = run("plan", "undo", "--batch", plan["batch"], "--reason", "r")
    assert second.code == 4 and "already has a planned undo" in second.err
    assert run("undo", "--batch", plan["batch"], "--reason", "r").code == 4
    assert run("discard", "--batch", first.json["batch"]).code == 0
    assert run("undo", "--batch", plan["batch"], "--reason", "r").code == 0
