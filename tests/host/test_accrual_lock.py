"""The per-access accrual lock: a recompute waits while another session holds it."""

import pytest
from django.db import OperationalError, connection, transaction

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
            update_payment_accrued_for_user(paid_access)
        paid_access.refresh_from_db()
        assert paid_access.payment_accrued == 0  # nothing was written

        raw_connection.execute("SELECT pg_advisory_unlock(%s, %s)", key)
        update_payment_accrued_for_user(paid_access)
        paid_access.refresh_from_db()
        assert paid_access.payment_accrued == 100
    finally:
        _lock_timeout(0)


def test_other_accesses_are_not_blocked(host, paid_access, raw_connection):
    other = host.access(paid_access.opportunity)
    raw_connection.execute("SELECT pg_advisory_lock(%s, %s)", accrual_lock_key(other.pk))
    _lock_timeout(200)
    try:
        update_payment_accrued_for_user(paid_access)
    finally:
        _lock_timeout(0)
    paid_access.refresh_from_db()
    assert paid_access.payment_accrued == 100


def test_lock_is_released_after_the_recompute(paid_access, raw_connection):
    update_payment_accrued_for_user(paid_access)
    key = accrual_lock_key(paid_access.pk)
    acquired = raw_connection.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0]
    assert acquired
    raw_connection.execute("SELECT pg_advisory_unlock(%s, %s)", key)
