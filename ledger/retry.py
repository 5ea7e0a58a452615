"""Backing off from live traffic: which database errors mean "try again", and how long to wait.

The projector never waits on a lock that live traffic holds: it asks for rows with NOWAIT and
for the host's accrual locks within a bounded wait, and when it cannot have everything it
gives all of it back (its transaction rolls back) and tries again a little later. A request
in flight therefore waits at most for one projection, and never finds itself in a deadlock
with one. The errors that mean "try again" are recognised by SQLSTATE, never by message text
(messages are translated).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError

from ledger.errors import Busy, LockBusy

T = TypeVar("T")

DEADLOCK = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
RETRYABLE = frozenset({DEADLOCK, SERIALIZATION_FAILURE, LOCK_NOT_AVAILABLE})

FIRST_PAUSE = 0.05
LONGEST_PAUSE = 2.0


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE behind a Django database error, under psycopg 3 or psycopg2."""
    for candidate in (error, error.__cause__, error.__context__):
        if candidate is None:
            continue
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return code
    return None


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a backend the ledger or the host's code relies on (the host's
    Redis, behind its accrual lock) could not be reached or did not answer in time."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from redis import exceptions
    except ImportError:  # no Redis client installed: no Redis lock either
        pass
    else:
        errors += [exceptions.ConnectionError, exceptions.TimeoutError]
    return tuple(errors)


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, LockBusy):
        return True
    if isinstance(error, unreachable_errors()):
        return True
    return isinstance(error, DatabaseError) and sqlstate(error) in RETRYABLE


def describe(error: BaseException) -> str:
    if isinstance(error, LockBusy):
        return str(error)
    if isinstance(error, unreachable_errors()) and not isinstance(error, DatabaseError):
        return f"a backend could not be reached ({type(error).__name__}: {error})"
    return {
        DEADLOCK: "a deadlock with another session",
        SERIALIZATION_FAILURE: "the ledger moved since this transaction's snapshot",
        LOCK_NOT_AVAILABLE: "rows locked by live traffic",
    }.get(sqlstate(error) or "", str(error))


def with_backoff(
    attempt: Callable[[], T],
    *,
    deadline_seconds: float,
    progress: Callable[[str], None] | None = None,
    what: str = "the projection",
) -> T:
    """Run ``attempt`` (one whole transaction) until it succeeds or the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    pause = FIRST_PAUSE
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except Exception as error:
            if not is_retryable(error):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise Busy(
                    f"gave up on {what} after {tries} attempts over {deadline_seconds:g} s: "
                    f"{describe(error)}; nothing was written, try again later"
                ) from error
            wait = min(pause * (0.5 + random.random()), left)
            if progress:
                progress(
                    f"{what}: {describe(error)}; released everything, retrying in {wait:.2f} s "
                    f"(attempt {tries + 1})"
                )
            time.sleep(wait)
            pause = min(pause * 2, LONGEST_PAUSE)
