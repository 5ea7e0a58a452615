"""Planning takes no row lock: live submissions are never held up by a plan, and a plan is
never held up by them."""

from __future__ import annotations

import time

import pytest

from commcare_connect.opportunity.models import CompletedWork, OpportunityAccess, UserVisit
from ledger import services
from ledger.lock_probe import LockProbe
from ledger.sql import int_array

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def workers(make_capped_access):
    """Three workers over their caps, and every row a correction of them would touch."""
    accesses = [make_capped_access(works=24, cap=4) for _ in range(3)]
    ids = [a.pk for a in accesses]
    rows = {
        CompletedWork: list(
            CompletedWork.objects.filter(opportunity_access_id__in=ids).values_list("pk", flat=True)
        ),
        UserVisit: list(
            UserVisit.objects.filter(completed_work__opportunity_access_id__in=ids).values_list(
                "pk", flat=True
            )
        ),
        OpportunityAccess: ids,
    }
    return [str(a.opportunity.opportunity_id) for a in accesses], rows


def _plan_repeatedly(opportunities: list[str], *, exact: bool, seconds: float = 1.0) -> int:
    plans = 0
    until = time.monotonic() + seconds
    while plans < 2 or time.monotonic() < until:
        report = services.plan_over_cap(opportunities, reason="probe", exact=exact)
        assert report.totals.works == 60
        plans += 1
    return plans


def test_a_second_connection_can_lock_every_row_while_plans_are_priced(workers):
    opportunities, rows = workers
    with LockProbe(rows) as probe:
        _plan_repeatedly(opportunities, exact=False)
    assert probe.errors == []
    assert probe.attempts >= 10
    assert probe.failures == 0, probe.failed_tables


def test_the_exact_pricing_does_hold_rows_so_the_probe_sees_locks(workers):
    """The probe is not blind: the host-code simulation (plan --exact) locks the workers'
    works and accesses while it runs, and the probe's tries fail then."""
    opportunities, rows = workers
    with LockProbe(rows) as probe:
        _plan_repeatedly(opportunities, exact=True, seconds=1.5)
    assert probe.errors == []
    assert probe.failures > 0


def test_a_plan_is_priced_while_live_traffic_holds_every_row(workers, raw_connection, settings):
    """Another session holds FOR UPDATE on every work, visit and access of the workers for the
    whole plan: the plan neither waits for them nor gives up."""
    settings.LEDGER_ACCESS_LOCK_WAIT = 0.2
    settings.LEDGER_RETRY_SECONDS = 1.0
    opportunities, rows = workers
    raw_connection.execute("BEGIN")
    for model, ids in rows.items():
        raw_connection.execute(
            f"SELECT id FROM {model._meta.db_table} WHERE id = ANY(%s::bigint[]) FOR UPDATE",
            [int_array(ids)],
        )
    try:
        started = time.monotonic()
        report = services.plan_over_cap(opportunities, reason="held")
        elapsed = time.monotonic() - started
    finally:
        raw_connection.execute("ROLLBACK")
    assert report.batch is not None and report.totals.works == 60
    assert sum(a.worker_accrual_change for a in report.accesses) == -60 * 100
    assert elapsed < 1.0


def test_visit_list_and_undo_plans_lock_nothing_either(workers):
    """The visit-list planner and an undo's plan read their rows a chunk at a time through a
    server-side cursor: a read like any other, which the probe can lock around."""
    opportunities, rows = workers
    visits = rows[UserVisit]
    with LockProbe(rows) as probe:
        until = time.monotonic() + 1.0
        planned = 0
        while planned < 2 or time.monotonic() < until:
            report = services.plan_visits("probe", visit_ids=visits, to_status="rejected")
            assert report.batch is not None
            planned += 1
    assert probe.errors == [] and probe.attempts >= 10
    assert probe.failures == 0, probe.failed_tables

    applied = services.plan_over_cap(opportunities, reason="to undo").batch
    services.apply_batch(applied)
    with LockProbe(rows) as probe:
        until = time.monotonic() + 1.0
        planned = 0
        while planned < 2 or time.monotonic() < until:
            undo = services.plan_undo(applied, reason="probe").batch
            assert undo is not None
            services.discard_batch(undo)  # one planned undo at a time
            planned += 1
    assert probe.errors == [] and probe.attempts >= 10
    assert probe.failures == 0, probe.failed_tables
