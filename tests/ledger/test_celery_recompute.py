"""Recomputes on real Celery workers: queued on commit, finished by a worker process, busy
accesses queued again, failures isolated, chunks idempotent, and a worker killed mid-chunk
losing nothing.

Each test runs a ``celery worker`` process against the test database and a private Redis; the
data is committed (transactional tests) so the worker sees it.
"""

from __future__ import annotations

import ast
import json
import re
import time

import pytest
from django.db import connection, transaction

from commcare_connect.opportunity.models import CompletedWork, ExchangeRate, OpportunityAccess
from ledger import services, testing
from ledger.models import AccrualRecompute

from .celery_worker import Worker, start_broker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    process, url = start_broker(tmp_path_factory.mktemp("broker"))
    from commcare_connect.celery_app import app

    app.conf.broker_url = url  # the test process sends through it
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def queue(broker):
    """The broker's Redis, emptied for the test."""
    import redis

    client = redis.Redis.from_url(broker)
    client.flushdb()
    return client


@pytest.fixture
def start_worker(broker, queue, transactional_db, tmp_path):
    """Start worker processes on the test database; all are stopped before the flush."""
    workers: list[Worker] = []

    def start(concurrency: int = 1, **settings: str) -> Worker:
        worker = Worker(
            broker,
            connection.settings_dict["NAME"],
            tmp_path / f"worker-{len(workers)}.log",
            concurrency,
            **settings,
        )
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_mode(settings):
    settings.LEDGER_RECOMPUTE = "celery"
    settings.LEDGER_RETRY_SECONDS = 20.0  # the test process's apply: fail fast, not in 5 min
    return settings


def _planned(accesses: list[OpportunityAccess]) -> str:
    report = services.plan_over_cap(
        [str(a.opportunity.opportunity_id) for a in accesses], reason="over the cap"
    )
    return report.batch


def _rows(batch: str) -> dict[int, AccrualRecompute]:
    return {r.access_id: r for r in AccrualRecompute.objects.filter(batch_id=batch)}


def _all_done(batch: str) -> bool:
    return not AccrualRecompute.objects.filter(batch_id=batch, state="pending").exists()


def _assert_as_projected(batch: str) -> None:
    """Every row done, with the accrual the plan projected, which the access now holds."""
    accrual = dict(OpportunityAccess.objects.values_list("pk", "payment_accrued"))
    for row in _rows(batch).values():
        assert row.state == "done", row.access_id
        assert row.accrual_after == row.projected_after == accrual[row.access_id], row.access_id
    testing.assert_events_match_state()


def _task_results(worker: Worker) -> list[dict]:
    return [
        ast.literal_eval(m)
        for m in re.findall(r"ledger\.recompute_accesses\[[^\]]+\] succeeded in [^:]+: (\{.*\})",
                            worker.text())
    ]  # fmt: skip


def _admin_batch_page(batch: str) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(get_user_model().objects.get(username="ledger-test"))
    response = client.get(reverse("admin:ledger_correctionbatch_change", args=[batch]))
    assert response.status_code == 200
    return response.content.decode()


class HeldWork:
    """Another session holds one of an access's works, as a submission in flight does."""

    def __init__(self, access_id: int) -> None:
        work = CompletedWork.objects.filter(opportunity_access_id=access_id).first()
        self.conn = connection.get_new_connection(connection.get_connection_params())
        self.conn.autocommit = False
        self.conn.cursor().execute(
            "SELECT id FROM opportunity_completedwork WHERE id = %s FOR UPDATE", [work.pk]
        )

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


def test_apply_queues_the_recompute_when_its_transaction_commits(
    make_capped_access, celery_mode, start_worker, queue
):
    celery_mode.LEDGER_RECOMPUTE_CHUNK = 2
    accesses = [make_capped_access(works=3, cap=1) for _ in range(3)]
    batch = _planned(accesses)
    start_worker()
    with transaction.atomic():  # the caller's transaction: nothing may be sent before it commits
        report = services.apply_batch(batch)
        assert report.recompute == "queued"
        assert report.queued_recomputes == report.pending_recomputes == 3
        assert queue.llen("celery") == 0
    wait_until(lambda: _all_done(batch), what="every recompute done")
    _assert_as_projected(batch)


def test_apply_and_undo_wait_for_the_workers(make_capped_access, celery_mode, start_worker, run):
    accesses = [make_capped_access(works=3, cap=1) for _ in range(4)]
    before = {a.pk: a.payment_accrued for a in accesses}
    batch = _planned(accesses)
    worker = start_worker(concurrency=2)

    applied = run("apply", "--batch", batch, "--wait", "--json")
    assert applied.code == 0, applied.err
    report = json.loads(applied.out)
    assert report["recompute"] == "queued"
    assert report["pending_recomputes"] == 0
    assert {a["state"] for a in report["accesses"]} == {"done"}
    assert all(a["matches"] for a in report["accesses"])
    assert "4/4 done" in applied.err
    _assert_as_projected(batch)

    # The undo, planned and applied like any batch, also waits for its recomputes.
    undo = services.plan_undo(batch, reason="rehearse the rollback").batch
    undone = run("apply", "--batch", undo, "--wait")
    assert undone.code == 0, undone.err
    testing.assert_batch_reverted(batch)
    assert {a.pk: a.payment_accrued for a in OpportunityAccess.objects.filter(pk__in=before)} == (
        before
    )
    assert sum(r["done"] for r in _task_results(worker)) == 8


def test_a_one_step_undo_waits_for_its_recomputes(
    make_capped_access, celery_mode, start_worker, run
):
    accesses = [make_capped_access(works=3, cap=1) for _ in range(2)]
    batch = _planned(accesses)
    start_worker()
    assert run("apply", "--batch", batch, "--wait").code == 0
    undone = run("undo", "--batch", batch, "--reason", "rehearse", "--wait", "--json")
    assert undone.code == 0, undone.err
    report = json.loads(undone.out)
    assert report["action"] == "undo" and report["recompute"] == "queued"
    assert [a["state"] for a in report["accesses"]] == ["done", "done"]
    assert all(a["matches"] for a in report["accesses"]) and not report["findings"]
    testing.assert_batch_reverted(batch)


def test_recompute_pending_queues_again_what_the_broker_lost(
    make_capped_access, celery_mode, start_worker, queue
):
    from ledger import tasks

    access = make_capped_access(works=3, cap=1)
    batch = _planned([access])
    services.apply_batch(batch)  # queued, no worker yet
    queue.flushdb()  # the broker loses its messages
    start_worker()
    tasks.recompute_pending.apply_async(args=[batch])
    wait_until(lambda: _all_done(batch), what="the lost recompute queued again and done")
    _assert_as_projected(batch)


def test_without_wait_a_queued_recompute_exits_0_and_show_follows_it(
    make_capped_access, celery_mode, start_worker, run
):
    access = make_capped_access(works=3, cap=1)
    batch = _planned([access])
    applied = run("apply", "--batch", batch)  # no worker yet: it stays queued
    assert applied.code == 0, applied.err
    assert "queued to the Celery workers" in applied.out
    shown = json.loads(run("show", "--batch", batch, "--json").out)
    assert shown["batch"]["recomputes_pending"] == shown["batch"]["recomputes_queued"] == 1
    assert shown["recomputes"][0]["queued_at"] is not None
    start_worker()
    wait_until(lambda: _all_done(batch), what="the queued recompute done")
    _assert_as_projected(batch)


def test_wait_gives_up_when_nothing_finishes(make_capped_access, celery_mode, run):
    celery_mode.LEDGER_RETRY_SECONDS = 1.0
    access = make_capped_access(works=3, cap=1)
    batch = _planned([access])
    started = time.monotonic()
    applied = run("apply", "--batch", batch, "--wait", "--json")  # no worker at all
    assert applied.code == 1, applied.err
    assert time.monotonic() - started < 30
    report = json.loads(applied.out)
    assert [p["access_id"] for p in report["pending"]] == [access.pk]
    assert "no recompute finished" in report["pending"][0]["reason"]
    assert "1 recomputes pending" in applied.err


def test_a_busy_access_is_queued_again_and_finished_later(
    make_capped_access, celery_mode, start_worker, run
):
    accesses = [make_capped_access(works=3, cap=1) for _ in range(3)]
    held = accesses[1]
    batch = _planned(accesses)
    assert services.apply_batch(batch).recompute == "queued"  # no worker yet
    lock = HeldWork(held.pk)  # then live traffic holds one access's work
    try:
        start_worker()

        def others_done_and_held_busy() -> bool:
            rows = _rows(batch)
            return (
                all(rows[a.pk].state == "done" for a in accesses if a is not held)
                and rows[held.pk].last_problem == "busy"
            )

        wait_until(others_done_and_held_busy, what="the held access seen busy")
        row = _rows(batch)[held.pk]
        assert row.state == "pending" and row.attempts >= 1 and row.queued_at is not None
        shown = json.loads(run("show", "--batch", batch, "--json").out)["batch"]
        assert (shown["recomputes_busy"], shown["recomputes_queued"]) == (1, 1)
        assert "2 done, 1 pending (1 queued, 1 busy)" in run("show", "--batch", batch).out
        page = _admin_batch_page(batch)
        assert "2 done, 1 pending (1 queued, 1 busy)" in page
        assert "last problem (access" in page and "held by live traffic" in page
    finally:
        lock.release()
    wait_until(lambda: _all_done(batch), what="the busy access finished after its release")
    _assert_as_projected(batch)


def test_a_failing_access_does_not_stop_the_others(incident, celery_mode, start_worker, run):
    opps = [str(incident.opportunity_a.opportunity_id), str(incident.opportunity_b.opportunity_id)]
    batch = services.plan_over_cap(opps, reason="over the cap").batch
    failing = incident.accesses["w4"].pk  # opportunity B is in KES
    # The KES rates disappear after pricing: the host's recompute of w4 cannot convert its pay.
    rates = list(ExchangeRate.objects.filter(currency_code="KES").values())
    ExchangeRate.objects.filter(currency_code="KES").delete()
    start_worker()

    applied = run("apply", "--batch", batch, "--wait", "--json")
    assert applied.code == 1, applied.err
    report = json.loads(applied.out)
    assert [p["access_id"] for p in report["pending"]] == [failing]
    assert report["pending"][0]["reason"].startswith("failed: ExternalRateFetchError")
    rows = _rows(batch)
    assert {pk for pk, r in rows.items() if r.state == "done"} == set(rows) - {failing}
    assert rows[failing].last_problem == "failed" and rows[failing].queued_at is None

    ExchangeRate.objects.bulk_create(ExchangeRate(**r) for r in rates)
    assert run("recompute", "--batch", batch).code == 0
    _assert_as_projected(batch)


def test_a_chunk_run_twice_at_once_or_again_recomputes_each_access_once(
    make_capped_access, celery_mode, start_worker, queue
):
    from ledger import tasks

    accesses = [make_capped_access(works=3, cap=1) for _ in range(4)]
    ids = sorted(a.pk for a in accesses)
    batch = _planned(accesses)
    worker = start_worker(concurrency=2)
    # The same chunk three times: twice side by side right away, and the apply's own.
    for _ in range(2):
        tasks.recompute_accesses.apply_async(args=[batch, ids, time.time()])
    services.apply_batch(batch)  # projects, then queues the chunk a third time
    wait_until(lambda: _all_done(batch), what="every recompute done")
    wait_until(lambda: _drained(worker, queue), what="the queue drained")
    done_at = {pk: r.done_at for pk, r in _rows(batch).items()}
    runs = len(_task_results(worker))
    assert runs >= 3

    # And again, long after: every row is done already, so nothing is recomputed.
    tasks.recompute_accesses.apply_async(args=[batch, ids, time.time()])
    wait_until(lambda: len(_task_results(worker)) > runs, what="the fourth run")
    results = _task_results(worker)
    assert sum(r.get("done", 0) for r in results) == len(ids), results  # each access once
    assert results[-1] == {"skipped": len(ids)}
    assert {pk: r.done_at for pk, r in _rows(batch).items()} == done_at
    _assert_as_projected(batch)


def _drained(worker: Worker, queue) -> bool:
    """Every task the worker received has run, and nothing waits in the broker."""
    text = worker.text()
    received = len(re.findall(r"ledger\.recompute_accesses\[[^\]]+\] received", text))
    return (
        received == len(_task_results(worker))
        and not queue.llen("celery")
        and not queue.hlen("unacked")
    )


def test_a_worker_killed_mid_chunk_loses_nothing(make_capped_access, celery_mode, start_worker):
    celery_mode.LEDGER_RECOMPUTE_CHUNK = 10  # one chunk
    accesses = sorted((make_capped_access(works=3, cap=1) for _ in range(5)), key=lambda a: a.pk)
    held = accesses[2]
    batch = _planned(accesses)
    services.apply_batch(batch)  # queued; no worker yet
    lock = HeldWork(held.pk)  # the worker stops there for up to LEDGER_ACCESS_LOCK_WAIT
    try:
        first = start_worker(LEDGER_ACCESS_LOCK_WAIT="20")

        def stuck_in_the_middle() -> bool:
            rows = _rows(batch)
            return all(rows[a.pk].state == "done" for a in accesses[:2])

        wait_until(stuck_in_the_middle, what="the first two accesses done", poll=0.01)
        first.kill()
        rows = _rows(batch)
        assert [rows[a.pk].state for a in accesses] == ["done"] * 2 + ["pending"] * 3
    finally:
        lock.release()
    done_before = {a.pk: rows[a.pk].done_at for a in accesses[:2]}

    second = start_worker()  # the killed worker's message comes back after the visibility timeout
    wait_until(lambda: _all_done(batch), what="every recompute done after the crash", seconds=90)
    rows = _rows(batch)
    assert {a.pk: rows[a.pk].done_at for a in accesses[:2]} == done_before
    assert _task_results(second)[0] == {"skipped": 2, "done": 3}
    _assert_as_projected(batch)
