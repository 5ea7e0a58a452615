"""Live submissions keep arriving while a large correction is applied and undone.

Six submitter processes (web workers) run the host's form processor, each submission one
transaction (the host runs under ``ATOMIC_REQUESTS``), against the very accesses and works the
batch flips: half submit new entities (new works; the accrual lock, then the works of the
recompute), half repeat entities of planned works (the work's row, then the accrual lock). The
projector never waits on what a submission holds. Every submission must succeed and none may
meet a deadlock; afterwards events and state agree and no recompute is left pending.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import testing
from ledger.models import AccrualRecompute

ACCESSES = 40
WORKS_PER_ACCESS = 135
CAP = 10
SUBMITTERS = 6
T0 = datetime.datetime(2026, 2, 2, 8, 0, tzinfo=datetime.UTC)
ROOT = Path(__file__).resolve().parents[2]


def _build(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, org_amount=10, required=1, max_daily=100_000)
    form = unit.required[0]
    accesses = [host.access(opp, caps={unit: CAP}) for _ in range(ACCESSES)]
    works = CompletedWork.objects.bulk_create(
        CompletedWork(
            opportunity_access=access,
            payment_unit=unit.payment_unit,
            entity_id=f"e-{access.pk}-{n}",
            status="approved",
            status_modified_date=T0,
        )
        for access in accesses
        for n in range(WORKS_PER_ACCESS)
    )
    UserVisit.objects.bulk_create(
        UserVisit(
            opportunity=opp,
            user_id=work.opportunity_access.user_id,
            opportunity_access=work.opportunity_access,
            deliver_unit=form,
            entity_id=work.entity_id,
            xform_id=f"x-{work.pk}",
            visit_date=T0,
            status="approved",
            review_status="agree",
            completed_work=work,
            status_modified_date=T0,
            form_json={},
        )
        for work in works
    )
    for access in accesses:
        update_payment_accrued_for_user(access, incremental=False)
    return opp, form, accesses


class Submitters:
    """Submitter processes (web workers) running until stopped; their tallies are kept."""

    def __init__(self, form, accesses, folder) -> None:
        self.stop_file = folder / f"stop-{uuid.uuid4().hex}"
        env = {**os.environ, "DATABASE_NAME": connection.settings_dict["NAME"]}
        ids = [str(a.pk) for a in accesses]
        self._processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.ledger.live_submitter",
                    str(self.stop_file),
                    str(seed),
                    *ids,
                    "--form",
                    str(form.pk),
                    "--cap",
                    str(CAP),
                    "--works",
                    str(WORKS_PER_ACCESS),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for seed in range(SUBMITTERS)
        ]
        self.submitted = self.failed = self.deadlocks = 0
        self.messages: list[str] = []

    def __enter__(self) -> Submitters:
        time.sleep(3)  # the workers start up and traffic is flowing before the ledger starts
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)
        self.stop_file.touch()
        for process in self._processes:
            out, _ = process.communicate(timeout=120)
            tally = json.loads(out.strip().splitlines()[-1])
            self.submitted += tally["submitted"]
            self.failed += tally["failed"]
            self.deadlocks += tally["deadlocks"]
            self.messages += tally["messages"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_live_submissions_never_fail_during_apply_and_undo(host, run, attempt, tmp_path):
    opp, form, accesses = _build(host)
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "live", "--json"
    )
    assert plan.code == 0, plan.err
    flips = plan.json["totals"]["works"] + plan.json["totals"]["visits"]
    assert flips >= 10_000

    with Submitters(form, accesses, tmp_path) as traffic:
        applied = run("apply", "--batch", plan.json["batch"], "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert (traffic.failed, traffic.deadlocks) == (0, 0), traffic.messages
    assert traffic.submitted > 0
    during_apply = traffic.submitted
    assert applied.json["events"] > 0
    testing.assert_events_match_state()

    with Submitters(form, accesses, tmp_path) as traffic:
        undone = run(
            "undo", "--batch", plan.json["batch"], "--reason", "live undo", "--skip-conflicts",
            "--json",
        )  # fmt: skip
    assert undone.code == 0, undone.err
    assert (traffic.failed, traffic.deadlocks) == (0, 0), traffic.messages
    assert traffic.submitted > 0
    testing.assert_events_match_state()

    assert not AccrualRecompute.objects.filter(state="pending").exists()
    print(
        f"\nlive traffic run {attempt}: {flips} planned flips; applied {applied.json['events']} "
        f"events with {during_apply} submissions alongside, undid {undone.json['events']} with "
        f"{traffic.submitted}; 0 failed, 0 deadlocks"
    )
