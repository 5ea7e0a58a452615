"""The recompute after an apply makes no more queries per access than the host's own bulk task.

Counted with Django's ``CaptureQueriesContext`` (every statement, BEGIN and COMMIT included) as
the marginal cost of one more access: the queries for six accesses minus those for two, over
four — so a run's fixed reads do not blur the figure. The host's ``bulk_update_payment_accrued``
is counted the same way on the same kind of accesses, and recomputes them afterwards without
changing anything: the ledger's results are the host's.
"""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from commcare_connect.opportunity.models import CompletedWork, ExchangeRate, OpportunityAccess
from ledger import host, recomputes, services
from ledger.models import AccrualRecompute, CorrectionBatch

# Statements per access, the host's code included: the ledger adds its accrual lock (where the
# lock is a database one), one statement that reads the access and takes what it needs, and the
# update marking the row done. Before: 20 with the advisory lock, 15 with Redis.
CEILING = {"advisory": 14, "redis": 12}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["advisory", "redis"])
def lock(request, settings):
    if request.param == "redis":
        request.getfixturevalue("redis_cache")
        settings.LEDGER_ACCESS_LOCK = "ledger.locks.redis_access_lock"
    return request.param


def _accesses(host_factory, n: int) -> list[OpportunityAccess]:
    """``n`` accesses in EUR (so the rate is read), three approved works each."""
    ExchangeRate.objects.get_or_create(
        currency_code="EUR", rate_date=datetime.date(2020, 1, 1), defaults={"rate": 2}
    )
    opp = host_factory.opportunity(currency="EUR")
    unit = host_factory.unit(opp, required=2)
    accesses = [host_factory.access(opp) for _ in range(n)]
    for access in accesses:
        for _ in range(3):
            host_factory.approved_work(access, unit)
    return accesses


def _pending_batch(accesses: list[OpportunityAccess]) -> str:
    """A batch whose recompute of each access is pending, as a projection leaves it."""
    batch = CorrectionBatch.objects.create(
        planner="visit_list", reason="count", planned_by="ledger-test", plan_digest="0" * 64
    )
    AccrualRecompute.objects.bulk_create(
        AccrualRecompute(batch=batch, access_id=a.pk, opportunity_id=a.opportunity_id,
                         accrual_before=a.payment_accrued)
        for a in accesses
    )  # fmt: skip
    return str(batch.pk)


def _state(accesses):
    ids = [a.pk for a in accesses]
    return (
        sorted(OpportunityAccess.objects.filter(pk__in=ids).values_list("pk", "payment_accrued")),
        sorted(
            CompletedWork.objects.filter(opportunity_access_id__in=ids).values_list(
                "pk", "status", "saved_approved_count", "saved_payment_accrued",
                "saved_payment_accrued_usd", "saved_org_payment_accrued_usd",
            )
        ),
    )  # fmt: skip


def _ledger_queries(host_factory, n: int, run) -> int:
    accesses = _accesses(host_factory, n)
    batch = _pending_batch(accesses)
    with CaptureQueriesContext(connection) as captured:
        run(batch, accesses)
    assert not AccrualRecompute.objects.filter(batch_id=batch, state="pending").exists()
    state = _state(accesses)
    opp = accesses[0].opportunity_id
    host.bulk_update_payment_accrued(opp, [a.user_id for a in accesses])
    assert _state(accesses) == state, "the host's own recompute changed what the ledger saved"
    return len(captured.captured_queries)


def _host_queries(host_factory, n: int) -> int:
    accesses = _accesses(host_factory, n)
    with CaptureQueriesContext(connection) as captured:
        host.bulk_update_payment_accrued(accesses[0].opportunity_id, [a.user_id for a in accesses])
    return len(captured.captured_queries)


def _per_access(count) -> float:
    return (count(6) - count(2)) / 4


def _inline(batch, accesses):
    run = services.recompute(batch)
    assert run.done == len(accesses) and not run.pending


def _worker(batch, accesses):
    """What a Celery task does with its chunk."""
    for access in accesses:
        assert recomputes.finish(access.pk, batch).state == "done"


@pytest.mark.parametrize("run", [_inline, _worker], ids=["inline", "worker"])
def test_a_recompute_costs_no_more_queries_per_access_than_the_hosts_bulk_task(host, lock, run):
    ours = _per_access(lambda n: _ledger_queries(host, n, run))
    theirs = _per_access(lambda n: _host_queries(host, n))
    assert ours <= CEILING[lock], f"{ours} queries per access"
    assert ours <= theirs, f"{ours} queries per access, the host's bulk task {theirs}"
