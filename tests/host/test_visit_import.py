"""``visit_import`` and ``tasks``: the host's accrual entry points and exchange-rate lookup."""

import datetime
import inspect
from decimal import Decimal

import pytest

from commcare_connect.opportunity import tasks
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    ExchangeRate,
    OpportunityAccess,
    VisitValidationStatus,
)
from commcare_connect.opportunity.tasks import (
    ExternalRateFetchError,
    bulk_update_payment_accrued,
    fetch_exchange_rates,
)
from commcare_connect.opportunity.visit_import import (
    ImportException,
    get_exchange_rate,
    update_payment_accrued,
    update_payment_accrued_for_user,
)


def test_signatures_are_the_hosts():
    params = inspect.signature(update_payment_accrued_for_user).parameters
    assert list(params) == ["opportunity_access", "incremental", "completed_work_id"]
    assert params["incremental"].default is inspect.Parameter.empty
    assert params["completed_work_id"].default is None
    assert list(inspect.signature(update_payment_accrued).parameters) == [
        "opportunity",
        "users",
        "incremental",
    ]
    assert list(inspect.signature(get_exchange_rate).parameters) == ["currency_code", "date"]


def test_incremental_takes_unapproved_unaccrued_works_and_the_named_one(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    accrued = host.approved_work(access, unit)
    update_payment_accrued_for_user(access, False)
    # Accrued, then its visits rejected: incremental recomputes leave it as it is…
    accrued.uservisit_set.update(status=VisitValidationStatus.rejected)
    update_payment_accrued_for_user(access, True)
    assert CompletedWork.objects.get(pk=accrued.pk).status == CompletedWorkStatus.approved
    # …unless it is the work named.
    update_payment_accrued_for_user(access, True, completed_work_id=accrued.pk)
    assert CompletedWork.objects.get(pk=accrued.pk).status == CompletedWorkStatus.rejected
    # An approved work without accrued units is skipped too: "not approved" is required.
    stale = host.approved_work(access, unit, status=CompletedWorkStatus.approved)
    update_payment_accrued_for_user(access, True)
    assert CompletedWork.objects.get(pk=stale.pk).saved_payment_accrued == 0
    update_payment_accrued_for_user(access, False)
    assert CompletedWork.objects.get(pk=stale.pk).saved_payment_accrued == 100


def test_update_payment_accrued_recomputes_non_suspended_accesses_of_the_users(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    chosen = host.access(opp)
    suspended = host.access(opp, suspended=True)
    other = host.access(opp)
    for access in (chosen, suspended, other):
        host.approved_work(access, unit)
    update_payment_accrued(opp, [chosen.user, suspended.user])
    accrued = dict(OpportunityAccess.objects.values_list("pk", "payment_accrued"))
    assert (accrued[chosen.pk], accrued[suspended.pk], accrued[other.pk]) == (100, 0, 0)


def test_bulk_update_task_skips_rejected_works_and_suspended_accesses(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    suspended = host.access(opp, suspended=True)
    rejected = host.approved_work(access, unit, status=CompletedWorkStatus.rejected)
    host.approved_work(access, unit)
    host.approved_work(suspended, unit)

    bulk_update_payment_accrued.delay(opp.pk, [access.user_id, suspended.user_id])
    assert CompletedWork.objects.get(pk=rejected.pk).status == CompletedWorkStatus.rejected
    accrued = dict(OpportunityAccess.objects.values_list("pk", "payment_accrued"))
    assert (accrued[access.pk], accrued[suspended.pk]) == (100, 0)

    bulk_update_payment_accrued.apply_async(args=(opp.pk, [access.user_id]))
    bulk_update_payment_accrued(opp.pk, [access.user_id])
    assert OpportunityAccess.objects.get(pk=access.pk).payment_accrued == 100


def test_exchange_rate_of_usd_is_the_integer_one(db):
    assert get_exchange_rate("USD") == 1 and type(get_exchange_rate("usd")) is int


def test_exchange_rate_without_a_currency_raises_the_hosts_error(db):
    with pytest.raises(ImportException) as error:
        get_exchange_rate(None)
    assert error.value.message == "Opportunity must have specified currency to import payments"


def test_exchange_rate_is_the_latest_stored_on_or_before_the_date(db):
    ExchangeRate.objects.create(currency_code="XTS", rate_date=datetime.date(2026, 1, 1), rate=2)
    ExchangeRate.objects.create(currency_code="XTS", rate_date=datetime.date(2026, 2, 1), rate=3)
    assert get_exchange_rate("xts", datetime.date(2026, 1, 31)) == Decimal("2")
    assert get_exchange_rate("XTS", datetime.date(2026, 2, 1)) == Decimal("3")
    row = ExchangeRate.latest_exchange_rate("XTS", datetime.date(2026, 3, 5))
    assert isinstance(row, ExchangeRate) and row.rate_date == datetime.date(2026, 2, 1)


def test_a_missing_rate_calls_the_fetch_for_the_first_of_the_month(db, monkeypatch):
    calls = []

    def fetch(date=None, currency=None):
        calls.append((date, currency))
        return ExchangeRate.objects.create(currency_code=currency, rate_date=date, rate=4)

    monkeypatch.setattr(tasks, "fetch_exchange_rates", fetch)
    assert get_exchange_rate("XTS", datetime.date(2026, 5, 17)) == Decimal("4")
    assert calls == [(datetime.date(2026, 5, 1), "XTS")]


def test_the_fetch_never_goes_online(db):
    with pytest.raises(ExternalRateFetchError, match="external rates service"):
        get_exchange_rate("XTS", datetime.date(2026, 5, 17))
    with pytest.raises(ExternalRateFetchError, match="XTS rate for 2026-05-01"):
        fetch_exchange_rates.delay(datetime.date(2026, 5, 1), "XTS")
    with pytest.raises(ExternalRateFetchError, match="every opportunity currency"):
        fetch_exchange_rates()
    assert not ExchangeRate.objects.exists()
