"""Live submissions keep arriving while a large correction is applied and undone.

Six submitter processes (web workers) run the host's form processor, each submission one
transaction (the host runs under ``ATOMIC_REQUESTS``), against the very accesses and works the
batch flips: half submit new entities (new works; the accrual lock, then the works of the
recompute), half repeat entities of planned works (the work's row, then the accrual lock). The
projector never waits on what a submission holds.

Run with each of the host's accrual locks: the PostgreSQL advisory lock and the host's own Redis
lock (a real redis-server, the submitters and the ledger both locking in it). Every submission
must succeed and none may meet a deadlock — neither in the submitters' tallies nor in
PostgreSQL's own count (``pg_stat_database.deadlocks``). The apply skips only units a
submission changed, each one named in its output, and flips every other planned entity; the
undo, with new entities arriving on the same workers, inverts every event of the apply except
exactly the units a repeat submission added a visit to after the apply's commit.
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
from ledger.models import AccrualRecompute, CorrectionEvent, PlannedChange
from ledger.state import work_members

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

    def __init__(self, form, accesses, folder, redis_url=None, new_only=False) -> None:
        self.stop_file = folder / f"stop-{uuid.uuid4().hex}"
        env = {**os.environ, "DATABASE_NAME": connection.settings_dict["NAME"]}
        env.pop("REDIS_URL", None)
        if redis_url:
            env["REDIS_URL"] = redis_url
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
                    *(["--new-only"] if new_only else []),
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


def _deadlocks() -> int:
    """PostgreSQL's own count of deadlocks detected in this database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def _units(batch: str) -> dict[tuple[str, int], int]:
    """Each planned entity to flip, with its unit (its work, or itself)."""
    return {
        (kind, pk): work or pk
        for kind, pk, work in PlannedChange.objects.filter(batch_id=batch, excluded="").values_list(
            "entity_kind", "entity_id", "completed_work_id"
        )
    }


@pytest.fixture(params=["advisory", "redis"])
def accrual_lock(request, settings):
    """The host's accrual lock for this run: its REDIS_URL (None for the advisory lock)."""
    if request.param == "advisory":
        settings.LEDGER_ACCESS_LOCK = "commcare_connect.ledger_hooks.lock_accesses_for_transaction"
        yield None
        return
    url = request.getfixturevalue("redis_url")
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    }
    settings.LEDGER_ACCESS_LOCK = "ledger.locks.redis_access_lock"
    yield url


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", [1, 2])
def test_live_submissions_never_fail_during_apply_and_undo(
    host, run, attempt, accrual_lock, tmp_path
):
    opp, form, accesses = _build(host)
    plan = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "live", "--json"
    )
    assert plan.code == 0, plan.err
    flips = plan.json["totals"]["works"] + plan.json["totals"]["visits"]
    assert flips >= 10_000
    batch = plan.json["batch"]
    planned = _units(batch)
    deadlocks_before = _deadlocks()

    with Submitters(form, accesses, tmp_path, accrual_lock) as traffic:
        applied = run("apply", "--batch", batch, "--skip-conflicts", "--json")
    assert applied.code == 0, applied.err
    assert (traffic.failed, traffic.deadlocks) == (0, 0), traffic.messages
    assert traffic.submitted > 0
    during_apply = traffic.submitted
    # Every unit skipped is named with what a submission changed; everything else flipped.
    skipped = applied.json["skipped_conflicts"]
    assert {c["what"] for c in skipped} <= {"visits", "status", "completed_work", "busy"}, skipped
    skipped_units = {c["completed_work_id"] or c["entity_id"] for c in skipped}
    expected = {entity for entity, unit in planned.items() if unit not in skipped_units}
    flipped = set(
        CorrectionEvent.objects.filter(batch_id=batch).values_list("entity_kind", "entity_id")
    )
    assert flipped == expected
    assert applied.json["events"] == len(expected)
    testing.assert_events_match_state()

    # Repeat submissions that waited on a flipped work's row land once the apply commits: the
    # work then holds a visit the apply never saw (not in the visits its event recorded), and
    # its undo is a conflict. Those units are known exactly; every other unit must be undone.
    recorded = dict(
        CorrectionEvent.objects.filter(batch_id=batch, entity_kind="completed_work").values_list(
            "entity_id", "members"
        )
    )
    now = work_members(recorded)
    changed = {pk for pk, members in recorded.items() if now[pk] != members}
    with Submitters(form, accesses, tmp_path, accrual_lock, new_only=True) as traffic:
        undone = run(
            "undo", "--batch", batch, "--reason", "live undo", "--skip-conflicts", "--json"
        )
    assert undone.code == 0, undone.err
    assert (traffic.failed, traffic.deadlocks) == (0, 0), traffic.messages
    assert traffic.submitted > 0
    skipped = undone.json["skipped_conflicts"]
    assert {c["completed_work_id"] for c in skipped} == changed
    assert {c["what"] for c in skipped} <= {"visits"}, skipped
    reverted = {entity for entity in flipped if planned[entity] not in changed}
    assert undone.json["events"] == len(reverted)
    assert undone.json["reverted_state"] == ("partially_undone" if changed else "undone")
    for kind, model in (("completed_work", CompletedWork), ("visit", UserVisit)):
        ids = [pk for k, pk in reverted if k == kind]
        assert not model.objects.filter(pk__in=ids, status="over_limit").exists()
    testing.assert_events_match_state()

    assert not AccrualRecompute.objects.filter(state="pending").exists()
    time.sleep(0.6)  # statistics reach pg_stat_database within a second
    assert _deadlocks() == deadlocks_before
    print(
        f"\nlive traffic ({accrual_lock and 'redis' or 'advisory'} lock) run {attempt}: {flips} "
        f"planned flips; applied {applied.json['events']} events ({len(skipped_units)} units "
        f"skipped) with {during_apply} submissions alongside, undid {undone.json['events']} "
        f"({len(changed)} units changed after the apply skipped) with {traffic.submitted}; "
        "0 failed, 0 deadlocks"
    )
