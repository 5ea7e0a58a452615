"""Live submissions keep arriving while a large correction is applied and undone.

Six submitters run the host's form processor, each submission one transaction (the host runs
under ``ATOMIC_REQUESTS``), against the very accesses and works the batch flips: half submit new
entities (new works, the accrual lock), half repeat entities of planned works (the work's row,
then the accrual lock). The processor takes rows before the accrual lock; the projector must
never wait on what a submission holds. Every submission must succeed and none may meet a
deadlock; afterwards events and state agree and no recompute is left pending.
"""

from __future__ import annotations

import datetime
import itertools
import random
import threading
import time
import uuid

import pytest
from django.db import connection

from commcare_connect.form_receiver.processor import process_deliver_unit
from commcare_connect.opportunity.models import CompletedWork, UserVisit
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import testing
from ledger.models import AccrualRecompute
from ledger.retry import DEADLOCK, sqlstate

ACCESSES = 40
WORKS_PER_ACCESS = 135
CAP = 10
SUBMITTERS = 6
T0 = datetime.datetime(2026, 2, 2, 8, 0, tzinfo=datetime.UTC)


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
    """Threads submitting forms until stopped; every failure is kept."""

    def __init__(self, form, accesses) -> None:
        self.form = form
        self.accesses = accesses
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.deadlocks = 0
        self.submitted = 0
        self._lock = threading.Lock()
        self._n = itertools.count()
        self._threads = [
            threading.Thread(target=self._run, args=(seed,), daemon=True)
            for seed in range(SUBMITTERS)
        ]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not self.stop.is_set():
                access = rng.choice(self.accesses)
                if rng.random() < 0.5:
                    entity = f"live-{access.pk}-{next(self._n)}"
                else:  # a repeat visit to a work past the cap, one the batch flips
                    entity = f"e-{access.pk}-{rng.randrange(CAP, WORKS_PER_ACCESS)}"
                try:
                    process_deliver_unit(
                        access, self.form, xform_id=str(uuid.uuid4()), entity_id=entity,
                        visit_date=datetime.datetime.now(datetime.UTC),
                    )  # fmt: skip
                except Exception as error:  # noqa: BLE001 - every failure is a finding
                    with self._lock:
                        self.failures.append(error)
                        if sqlstate(error) == DEADLOCK:
                            self.deadlocks += 1
                else:
                    with self._lock:
                        self.submitted += 1
        finally:
            connection.close()

    def __enter__(self) -> Submitters:
        for thread in self._threads:
            thread.start()
        time.sleep(0.3)  # traffic is flowing before the ledger starts
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_live_submissions_never_fail_during_apply_and_undo(host, run, attempt):
    opp, form, accesses = _build(host)
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "live", "--json"
    )
    assert plan.code == 0, plan.err
    flips = plan.json["totals"]["works"] + plan.json["totals"]["visits"]
    assert flips >= 10_000

    with Submitters(form, accesses) as traffic:
        applied = run("apply", "--batch", plan.json["batch"], "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.deadlocks == 0
    assert traffic.submitted > 0
    assert applied.json["events"] > 0
    testing.assert_events_match_state()

    with Submitters(form, accesses) as traffic:
        undone = run(
            "undo", "--batch", plan.json["batch"], "--reason", "live undo", "--skip-conflicts",
            "--json",
        )  # fmt: skip
    assert undone.code == 0, undone.err
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.deadlocks == 0
    assert traffic.submitted > 0
    testing.assert_events_match_state()

    assert not AccrualRecompute.objects.filter(state="pending").exists()
    print(
        f"\nlive traffic run {attempt}: {flips} planned flips, applied {applied.json['events']} "
        f"events, undid {undone.json['events']}; submissions ok during apply+undo"
    )
