"""Implementations of ``LEDGER_ACCESS_LOCK``: the host's per-access accrual lock.

The host serialises recomputes of one access with a lock named
``update_payment_accrued_lock_<access id>``. While the projector flips an access's statuses it
holds the same lock, so a recompute that read the visits before the flip cannot write its
stale result afterwards.

A lock implementation is a callable ``(access_ids, wait) -> release``. It takes every lock or
none: it tries each lock without blocking, keeps the ones it got, and tries the busy ones again
a moment later — requests holding them finish and release them, and new requests for an
access already taken queue behind the projection — until it has them all; if that takes
longer than ``wait`` seconds it releases what it took and raises
:class:`~ledger.errors.LockBusy`, and the projector backs off and retries. It never blocks on a
lock, so it is never one side of a deadlock. The caller calls ``release()`` once its
transaction has ended, committed or rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ledger import conf
from ledger.errors import LedgerError, LockBusy, LockUnavailable
from ledger.retry import unreachable_errors

LOCK_NAME = "update_payment_accrued_lock_{}"
LOCK_TIMEOUT = 900  # seconds; the host's own expiry for this lock


POLL = 0.01  # seconds between rounds of attempts on the locks still busy


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

    missing = sorted(set(access_ids))
    try:
        while True:
            busy = []
            for access_id in missing:
                lock = cache.lock(LOCK_NAME.format(access_id), timeout=LOCK_TIMEOUT)
                if lock.acquire(blocking=False):
                    held.append(lock)
                else:
                    busy.append(access_id)
            if not busy:
                return release
            if time.monotonic() >= deadline:
                raise LockBusy(f"the accrual lock of access {busy[0]} is held elsewhere")
            missing = busy
            time.sleep(POLL)
    except BaseException:
        release()
        raise


def take_access_locks(
    lock: Callable[[Sequence[int], float], Callable[[], None]],
    access_ids: Sequence[int],
    wait: float,
) -> Callable[[], None]:
    """Take the accrual locks through ``lock``; a backend that cannot be reached (Redis down,
    a timeout) is :class:`~ledger.errors.LockUnavailable` — retried like a busy lock, and a
    one-line refusal when it outlasts the retries — never a driver's traceback."""
    try:
        return lock(access_ids, wait)
    except LedgerError:
        raise
    except unreachable_errors() as error:
        raise LockUnavailable(
            f"the accrual lock backend ({conf.get('ACCESS_LOCK')}) is unreachable: "
            f"{type(error).__name__}: {error}"
        ) from error
