"""The host's Redis accrual lock as the ledger takes it (``ledger.locks.redis_access_lock``).

A private redis-server backs a django-redis cache (skipped where none can start; CI starts
one). The lock is the host's own — ``update_payment_accrued_lock_<access id>`` — held while the
projection flips the access's statuses and freed the moment its transaction ends, committed or
refused.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import DatabaseError, connection

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from ledger import locks
from ledger.models import CorrectionBatch

from .conftest import ledger_counts, one_over_cap, plan_over_cap


@pytest.fixture
def redis_ledger(redis_cache, settings):
    settings.LEDGER_ACCESS_LOCK = "ledger.locks.redis_access_lock"
    settings.LEDGER_ACCESS_LOCK_WAIT = 0.3
    return redis_cache


def _free(cache, access_id: int) -> bool:
    lock = cache.lock(locks.LOCK_NAME.format(access_id), timeout=5)
    if lock.acquire(blocking=False):
        lock.release()
        return True
    return False


@pytest.mark.django_db(transaction=True)
def test_apply_holds_the_hosts_lock_while_projecting_and_frees_it(
    host, run, redis_ledger, monkeypatch
):
    opp, access = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    seen = []
    real = locks.redis_access_lock

    def watching(access_ids, wait):
        release = real(access_ids, wait)
        seen.append([_free(redis_ledger, a) for a in access_ids])  # held: not free
        return release

    monkeypatch.setattr(locks, "redis_access_lock", watching)
    assert run("apply", "--batch", batch).code == 0
    assert seen == [[False]]
    assert _free(redis_ledger, access.pk)
    assert CompletedWork.objects.filter(opportunity_access=access, status="over_limit").count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_refused_apply_frees_the_locks_at_once(host, run, redis_ledger):
    opp, access = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    work = CompletedWork.objects.filter(opportunity_access=access).order_by("-id").first()
    CompletedWork.objects.filter(pk=work.pk).update(status="rejected")  # a conflict
    counts = ledger_counts()
    result = run("apply", "--batch", batch)
    assert result.code == 5  # conflict
    assert ledger_counts() == counts
    assert _free(redis_ledger, access.pk)  # not left to expire after 15 minutes


@pytest.mark.django_db(transaction=True)
def test_apply_backs_off_while_live_traffic_holds_the_lock(host, run, redis_ledger):
    opp, access = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    # Another request's lock, released from its own thread a second later.
    held = redis_ledger.lock(locks.LOCK_NAME.format(access.pk), timeout=900, thread_local=False)
    assert held.acquire(blocking=False)
    releaser = threading.Timer(1.0, held.release)
    releaser.start()
    started = time.monotonic()
    result = run("apply", "--batch", batch)
    releaser.join()
    assert result.code == 0, result.err
    assert time.monotonic() - started >= 0.9
    assert f"the accrual lock of access {access.pk} is held elsewhere" in result.err
    assert _free(redis_ledger, access.pk)


@pytest.mark.django_db(transaction=True)
def test_a_lock_held_too_long_makes_apply_give_up_having_written_nothing(
    host, run, redis_ledger, settings
):
    settings.LEDGER_RETRY_SECONDS = 1.0
    opp, access = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    held = redis_ledger.lock(locks.LOCK_NAME.format(access.pk), timeout=900)
    assert held.acquire(blocking=False)
    try:
        counts = ledger_counts()
        result = run("apply", "--batch", batch)
        assert result.code == 6  # busy
        assert "gave up" in result.err and "nothing was written" in result.err
        assert ledger_counts() == counts
    finally:
        held.release()


@pytest.mark.django_db(transaction=True)
def test_a_database_error_mid_projection_frees_the_locks_and_writes_nothing(
    host, run, redis_ledger
):
    """A statement that fails inside the projection (here: the database refusing the visits'
    update, after the works were written) rolls the projection back and frees the Redis lock
    at once — it is not left to expire after 15 minutes."""
    opp, access = one_over_cap(host)
    batch = plan_over_cap(run, opp)["batch"]
    before = dict(
        CompletedWork.objects.filter(opportunity_access=access).values_list("pk", "status")
    )
    counts = ledger_counts()
    visits = UserVisit._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_over_limit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'simulated failure mid-projection'; END; $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_refuse_over_limit BEFORE UPDATE ON {visits} FOR EACH ROW "
            "WHEN (NEW.status = 'over_limit') EXECUTE FUNCTION test_refuse_over_limit()"
        )
    try:
        with pytest.raises(DatabaseError, match="simulated failure mid-projection"):
            run("apply", "--batch", batch)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER test_refuse_over_limit ON {visits}")
            cursor.execute("DROP FUNCTION test_refuse_over_limit()")
    assert _free(redis_ledger, access.pk)
    assert ledger_counts() == counts
    assert CorrectionBatch.objects.get(pk=batch).state == "planned"
    assert (
        dict(CompletedWork.objects.filter(opportunity_access=access).values_list("pk", "status"))
        == before
    )
    # The same apply goes through once the database accepts the writes again.
    assert run("apply", "--batch", batch).code == 0
