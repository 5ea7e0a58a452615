"""One order, one clock, and a write path that backs off instead of waiting on live traffic."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from commcare_connect.ledger_hooks import lock_accesses_for_transaction
from commcare_connect.opportunity.models import CompletedWork
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import testing
from ledger.head import lock_head
from ledger.models import AccrualRecompute, BatchEntry, CorrectionBatch, CorrectionEvent
from ledger.retry import is_retryable
from ledger.verify import run_checks

from .conftest import ledger_counts

_slow_once = threading.Event()


def slow_lock(access_ids, wait):
    """The stand-in's accrual lock, holding the first projection that takes it for a second."""
    release = lock_accesses_for_transaction(access_ids, wait)
    if not _slow_once.is_set():
        _slow_once.set()
        time.sleep(1.0)
    return release


def _capped_opportunity(host, works: int = 4, cap: int = 2):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, required=1)
    access = host.access(opp, caps={unit: cap})
    for _ in range(works):
        host.approved_work(access, unit)
    update_payment_accrued_for_user(access, incremental=False)
    return opp, access


def _plan(run, opp) -> str:
    result = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "r", "--json"
    )
    assert result.code == 0, result.err
    return result.json["batch"]


@pytest.mark.django_db(transaction=True)
def test_the_chain_does_not_fork_under_repeatable_read(host, run, settings):
    batches = [_plan(run, _capped_opportunity(host)[0]) for _ in range(2)]
    settings.LEDGER_ACCESS_LOCK = f"{__name__}.slow_lock"
    _slow_once.clear()
    results = {}

    def apply(batch: str) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                )
            results[batch] = run("apply", "--batch", batch)
        finally:
            connection.close()

    first = threading.Thread(target=apply, args=(batches[0],))
    first.start()
    time.sleep(0.3)  # the first holds the ledger while the second takes its snapshot
    second = threading.Thread(target=apply, args=(batches[1],))
    second.start()
    first.join(60)
    second.join(60)

    assert [results[b].code for b in batches] == [0, 0], [results[b].err for b in batches]
    report = run_checks(["chain", "continuity", "batches"])
    assert report.ok, report
    order = list(CorrectionEvent.objects.order_by("id").values_list("batch_id", flat=True))
    runs = [b for i, b in enumerate(order) if i == 0 or order[i - 1] != b]
    assert len(runs) == 2  # one batch after the other, never interleaved


def test_times_come_from_the_database_clock(host, run, monkeypatch):
    opp, access = _capped_opportunity(host)
    batch = _plan(run, opp)
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        database_now = cursor.fetchone()[0]
    skew = datetime.timedelta(hours=3)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + skew)

    assert run("apply", "--batch", batch).code == 0
    stored = CorrectionBatch.objects.get(pk=batch)
    for moment in [
        stored.applied_at,
        *CorrectionEvent.objects.filter(batch_id=batch).values_list("recorded_at", flat=True),
    ]:
        assert abs(moment - database_now) < datetime.timedelta(minutes=5)
    # An auditor asking about a moment after the apply sees the correction.
    later = (database_now + datetime.timedelta(minutes=30)).isoformat()
    work = CompletedWork.objects.filter(opportunity_access=access, status="over_limit").first()
    history = run("history", "--completed-work", str(work.pk), "--as-of", later, "--json")
    assert history.code == 0, history.err
    statuses = {(s["entity_kind"], s["entity_id"]): s["status"] for s in history.json["statuses"]}
    assert statuses[("completed_work", work.pk)] == "over_limit"


def test_apply_inside_a_callers_transaction_works_with_transaction_scoped_locks(host, run):
    # The test itself runs inside a transaction, as a view under ATOMIC_REQUESTS would.
    assert connection.in_atomic_block
    opp, access = _capped_opportunity(host)
    batch = _plan(run, opp)
    result = run("apply", "--batch", batch, "--json")
    assert result.code == 0, result.err
    assert not AccrualRecompute.objects.filter(batch_id=batch, state="pending").exists()
    access.refresh_from_db()
    assert access.payment_accrued == 200
    testing.assert_events_match_state()


def test_apply_inside_a_callers_transaction_is_refused_with_redis_locks(host, run, settings):
    opp, _ = _capped_opportunity(host)
    batch = _plan(run, opp)
    settings.LEDGER_ACCESS_LOCK = "ledger.locks.redis_access_lock"
    counts = ledger_counts()
    result = run("apply", "--batch", batch)
    assert result.code == 3
    assert "cannot run inside the caller's transaction" in result.err
    assert ledger_counts() == counts
    assert CorrectionBatch.objects.get(pk=batch).state == "planned"


def test_retries_are_recognised_by_sqlstate_not_message():
    class Cause(Exception):
        sqlstate = "40P01"

    translated = OperationalError("Verklemmung entdeckt")
    translated.__cause__ = Cause()
    assert is_retryable(translated)
    assert not is_retryable(OperationalError("deadlock detected"))


@pytest.mark.django_db(transaction=True)
def test_apply_backs_off_while_live_traffic_holds_a_row(host, run, raw_connection, settings):
    settings.LEDGER_ACCESS_LOCK_WAIT = 0.2  # give the row up quickly, then retry
    opp, access = _capped_opportunity(host)
    batch = _plan(run, opp)
    held = CompletedWork.objects.filter(opportunity_access=access).order_by("-id").first()
    raw_connection.execute("BEGIN")
    raw_connection.execute(
        "SELECT id FROM opportunity_completedwork WHERE id = %s FOR UPDATE", [held.pk]
    )
    releaser = threading.Timer(1.0, lambda: raw_connection.execute("COMMIT"))
    releaser.start()
    started = time.monotonic()
    result = run("apply", "--batch", batch)
    releaser.join()
    assert result.code == 0, result.err
    assert time.monotonic() - started >= 0.9
    assert "held by live traffic" in result.err
    assert CompletedWork.objects.get(pk=held.pk).status == "over_limit"


def _scans_of(model) -> int:
    """Scans of ``model``'s table in this transaction so far (sequential and index)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(seq_scan + idx_scan), 0) FROM pg_stat_xact_user_tables "
            "WHERE relid = %s::regclass",
            [model._meta.db_table],
        )
        return cursor.fetchone()[0]


def test_taking_the_write_lock_does_not_read_the_ledger_once_the_head_exists(host, run):
    """The head row replaces a count of every event; a write must not pay for that count."""
    opp, _ = _capped_opportunity(host)
    _plan(run, opp)  # a lifecycle entry: the head exists
    first = lock_head()
    before = _scans_of(CorrectionEvent), _scans_of(BatchEntry)
    assert lock_head() == first
    assert (_scans_of(CorrectionEvent), _scans_of(BatchEntry)) == before
