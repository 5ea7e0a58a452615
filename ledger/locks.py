"""Implementations of ``LEDGER_ACCESS_LOCK``: the host's per-access accrual lock.

The host serialises recomputes of one access with a lock named
``update_payment_accrued_lock_<access id>``. While the projector flips an access's statuses it
holds the same lock, so a recompute that read the visits before the flip cannot write its
stale result afterwards.

A lock implementation is a callable ``(access_ids, wait) -> release``. It takes every lock or
none: if it cannot have them all within ``wait`` seconds it releases what it took and raises
:class:`~ledger.errors.LockBusy`, and the projector backs off and retries — it never sits on
some locks while waiting for others, which is how a lock-order inversion with live traffic
becomes a stall. The caller calls ``release()`` once its transaction has ended, committed or
rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ledger import conf
from ledger.errors import LockBusy

LOCK_NAME = "update_payment_accrued_lock_{}"
LOCK_TIMEOUT = 900  # seconds; the host's own expiry for this lock


def redis_access_lock(access_ids: Sequence[int], wait: float) -> Callable[[], None]:
    """The host's Redis lock (django-redis ``cache.lock``), all or nothing within ``wait``."""
    from django.core.cache import caches

    cache = caches[conf.get("ACCESS_LOCK_CACHE")]
    deadline = time.monotonic() + wait
    held = []

    def release() -> None:
        while held:
            lock = held.pop()
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - expired or already released: nothing to free
                pass

    try:
        for access_id in sorted(access_ids):
            lock = cache.lock(LOCK_NAME.format(access_id), timeout=LOCK_TIMEOUT)
            remaining = max(0.0, deadline - time.monotonic())
            if not lock.acquire(blocking=True, blocking_timeout=remaining):
                raise LockBusy(f"the accrual lock of access {access_id} is held elsewhere")
            held.append(lock)
    except BaseException:
        release()
        raise
    return release
