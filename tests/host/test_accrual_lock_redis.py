"""With Redis configured the accrual recompute takes the host's Redis lock, exactly as named.

A private ``redis-server`` (on a Unix socket in a temporary folder) backs a django-redis cache;
skipped when either is unavailable.
"""

from __future__ import annotations

import runpy
import threading
from pathlib import Path

import pytest
from django.db import connection

from commcare_connect.opportunity.accrual_lock import cache_has_lock
from commcare_connect.opportunity.models import OpportunityAccess
from commcare_connect.opportunity.tasks import bulk_update_payment_accrued
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user

SETTINGS = Path(__file__).resolve().parents[2] / "commcare_connect" / "settings.py"


def test_redis_url_selects_the_hosts_cache_and_the_redis_ledger_lock(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/0")
    settings = runpy.run_path(str(SETTINGS))
    cache = settings["CACHES"]["default"]
    assert cache["BACKEND"] == "django_redis.cache.RedisCache"
    assert cache["LOCATION"] == "redis://cache.example:6379/0"
    assert cache["OPTIONS"]["CLIENT_CLASS"] == "django_redis.client.DefaultClient"
    assert settings["LEDGER_ACCESS_LOCK"] == "ledger.locks.redis_access_lock"

    monkeypatch.delenv("REDIS_URL")
    settings = runpy.run_path(str(SETTINGS))
    assert "CACHES" not in settings  # Django's local-memory cache: no lock()
    assert settings["LEDGER_ACCESS_LOCK"].startswith("commcare_connect.ledger_hooks.")


def _paid_access(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    host.approved_work(access, unit)
    return access


def test_the_lock_is_the_hosts_name_and_timeout(host, redis_cache, monkeypatch):
    from django_redis.cache import RedisCache

    assert cache_has_lock()
    taken = []
    original = RedisCache.lock

    def spy(self, *args, **kwargs):
        taken.append((args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RedisCache, "lock", spy)
    access = _paid_access(host)
    update_payment_accrued_for_user(access, incremental=False)
    bulk_update_payment_accrued(access.opportunity_id, [access.user_id])
    name = f"update_payment_accrued_lock_{access.id}"
    assert taken == [((name,), {"timeout": 900})] * 2
    assert access.payment_accrued == 100


def test_no_lock_without_a_redis_cache(db):
    assert not cache_has_lock()


@pytest.mark.django_db(transaction=True)
def test_a_recompute_waits_while_another_client_holds_the_lock(host, redis_cache):
    access = _paid_access(host)
    held = redis_cache.lock(f"update_payment_accrued_lock_{access.id}", timeout=30)
    assert held.acquire(blocking=False)
    errors: list[BaseException] = []

    def recompute():
        try:
            update_payment_accrued_for_user(
                OpportunityAccess.objects.get(pk=access.pk), incremental=False
            )
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            connection.close()

    worker = threading.Thread(target=recompute)
    worker.start()
    worker.join(timeout=0.5)
    assert worker.is_alive()  # waiting for the lock
    assert OpportunityAccess.objects.get(pk=access.pk).payment_accrued == 0
    held.release()
    worker.join(timeout=30)
    assert not worker.is_alive() and errors == []
    assert OpportunityAccess.objects.get(pk=access.pk).payment_accrued == 100
