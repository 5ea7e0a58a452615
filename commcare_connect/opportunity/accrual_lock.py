"""The per-access lock the host takes around every accrual recompute.

The host wraps each recompute of an access in
``cache.lock(f"update_payment_accrued_lock_{access.id}", timeout=900)`` on its django-redis
cache. When the configured cache offers ``lock`` (``REDIS_URL`` is set), this stand-in does
exactly that. Without Redis it falls back to a PostgreSQL advisory lock keyed by the access id,
which serialises recomputes the same way with one difference: inside a transaction the
advisory lock is held until the transaction ends, where the host's Redis lock is released as
soon as the recompute returns, before its writes are committed.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.core.cache import cache
from django.db import connection

LOCK_NAME = "update_payment_accrued_lock_{}"
LOCK_TIMEOUT = 900  # seconds, the host's expiry for the Redis lock

# Advisory-lock key space (two int4 keys: this namespace and the access id).
ACCRUAL_LOCK_NAMESPACE = 0x43435041  # "CCPA"


def accrual_lock_key(access_id: int) -> tuple[int, int]:
    return ACCRUAL_LOCK_NAMESPACE, access_id % 2147483647


def cache_has_lock() -> bool:
    """Whether the default cache can take the host's Redis lock (django-redis can)."""
    return callable(getattr(cache, "lock", None))


@contextmanager
def payment_accrued_lock(access_id: int):
    """Hold the accrual lock of one access for the duration of the block."""
    if cache_has_lock():
        with cache.lock(LOCK_NAME.format(access_id), timeout=LOCK_TIMEOUT):
            yield
        return
    with _advisory_lock(access_id):
        yield


@contextmanager
def _advisory_lock(access_id: int):
    """Inside a transaction: a transaction-scoped lock, so a failed recompute cannot leave it
    held (the rollback frees it) and nobody reads the access's rows before they are committed.
    In autocommit mode: a session lock, released on exit."""
    key = accrual_lock_key(access_id)
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)
