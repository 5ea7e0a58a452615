"""What every check shares: the report's structures and a few ways to read the database."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import msgspec
from django.db import connection

from ledger.host import CompletedWork, UserVisit
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    LedgerHead,
    PlannedChange,
)

MAX_PROBLEMS_PER_CHECK = 100

T = TypeVar("T")
_SHARED: ContextVar[dict | None] = ContextVar("ledger_verify_shared", default=None)


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One violation. Which fields are set depends on the check."""

    check: str
    message: str
    entity_kind: str | None = None
    entity_id: int | None = None
    event_id: int | None = None
    batch: str | None = None
    expected: str | None = None
    found: str | None = None


class CheckOutcome(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    checked: int
    """How many rows (triggers, events, entities, batches…) the check looked at."""
    problems: int
    """Total problems found (only the first ``MAX_PROBLEMS_PER_CHECK`` are listed)."""
    seconds: float
    note: str = ""


class ChainHead(msgspec.Struct, kw_only=True):
    """The last event: record its hash somewhere safe to detect a later truncation."""

    events: int
    last_event_id: int | None
    last_hash: str | None


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    checks: list[CheckOutcome]
    problems: list[Problem]
    head: ChainHead


def tables() -> dict[str, str]:
    return {
        "event": CorrectionEvent._meta.db_table,
        "batch": CorrectionBatch._meta.db_table,
        "recompute": AccrualRecompute._meta.db_table,
        "head": LedgerHead._meta.db_table,
        "entry": BatchEntry._meta.db_table,
        "planned": PlannedChange._meta.db_table,
        "visit": UserVisit._meta.db_table,
        "work": CompletedWork._meta.db_table,
    }


def fetchall(sql: str, params: Iterable = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return cursor.fetchall()


def scalar(sql: str, params: Iterable = ()):
    return fetchall(sql, params)[0][0]


Result = tuple[int, int, list[Problem], str]
"""(checked, total problems, listed problems, note)"""


@contextmanager
def shared_reads() -> Iterator[None]:
    """Within one verify run, a whole-ledger read that several checks need (the events'
    count, each batch's event counts) is made once: the checks read one snapshot, so the
    second read would only repeat a scan of millions of events."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def shared(key: str, read: Callable[[], T]) -> T:
    """``read()``, made once per :func:`shared_reads` block (every time outside one)."""
    memo = _SHARED.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


def event_count() -> int:
    return shared("events", lambda: scalar(f"SELECT count(*) FROM {tables()['event']}"))
