"""The per-access accrual lock: a recompute waits while another session holds it."""

import datetime
from decimal import Decimal

import pytest
from django.db import DataError, OperationalError, connection, transaction

from commcare_connect.opportunity.models import ExchangeRate
from commcare_connect.opportunity.visit_import import (
    accrual_lock_key,
    update_payment_accrued_for_user,
)


@pytest.fixture
def paid_access(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    host.approved_work(access, unit)
    return access


def _lock_timeout(ms: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = '{ms}ms'")


def test_recompute_blocks_while_the_lock_is_held_elsewhere(paid_access, raw_connection):
    key = accrual_lock_key(paid_access.pk)
    raw_connection.execute("SELECT pg_advisory_lock(%s, %s)", key)
    _lock_timeout(200)
    try:
        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            update_payment_accrued_for_user(paid_access, incremental=False)
        paid_access.refresh_from_db()
        assert paid_access.payment_accrued == 0  # nothing was written

        raw_connection.execute("SELECT pg_advisory_unlock(%s, %s)", key)
        update_payment_accrued_for_user(paid_access, incremental=False)
        paid_access.refresh_from_db()
        assert paid_access.payment_accrued == 100
    finally:
        _lock_timeout(0)


def test_other_accesses_are_not_blocked(host, paid_access, raw_connection):
    other = host.access(paid_access.opportunity)
    raw_connection.execute("SELECT pg_advisory_lock(%s, %s)", accrual_lock_key(other.pk))
    _lock_timeout(200)
    try:
        update_payment_accrued_for_user(paid_access, incremental=False)
    finally:
        _lock_timeout(0)
    paid_access.refresh_from_db()
    assert paid_access.payment_accrued == 100


def _free_elsewhere(raw_connection, access) -> bool:
    """Whether another session can take the access's lock right now (released at once)."""
    key = accrual_lock_key(access.pk)
    [(acquired,)] = raw_connection.execute("SELECT pg_try_advisory_lock(%s, %s)", key)
    if acquired:
        raw_connection.execute("SELECT pg_advisory_unlock(%s, %s)", key)
    return acquired


@pytest.mark.django_db(transaction=True)
def test_lock_is_released_on_exit_in_autocommit_and_at_the_end_of_a_transaction(
    host, raw_connection
):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    host.approved_work(access, unit)

    update_payment_accrued_for_user(access, incremental=False)
    assert _free_elsewhere(raw_connection, access)

    with transaction.atomic():
        update_payment_accrued_for_user(access, incremental=False)
        # Held until the writes are committed, so no recompute can read around them.
        assert not _free_elsewhere(raw_connection, access)
    assert _free_elsewhere(raw_connection, access)


def _failing_access(host):
    """An access whose recompute fails in the database: its USD pay overflows numeric(10,2)."""
    ExchangeRate.objects.update_or_create(
        currency_code="XTS",
        rate_date=datetime.date(2000, 1, 1),
        defaults={"rate": Decimal("0.000001")},
    )
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp, amount=1000)
    access = host.access(opp)
    host.approved_work(access, unit)
    return access


def test_a_failed_recompute_raises_its_own_error_and_leaks_no_lock(host, raw_connection):
    access = _failing_access(host)
    with pytest.raises(DataError), transaction.atomic():
        update_payment_accrued_for_user(access, incremental=False)
    assert _free_elsewhere(raw_connection, access)
