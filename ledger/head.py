"""The chain head: one row naming the last event and the last lifecycle entry.

Locking it (``SELECT … FOR UPDATE``) is the ledger's write lock: every projection and every
lifecycle entry is appended under it, so ids, chain order and database-clock times agree. It is
a row lock, not an advisory lock, because under REPEATABLE READ a head that moved after the
transaction's snapshot then fails with a serialization error (and the write is retried),
where an advisory lock would let a writer chain onto a stale head.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

from django.db import connection

from ledger import chain
from ledger.models import BatchEntry, CorrectionEvent, LedgerHead
from ledger.sql import table


class Head(NamedTuple):
    event_id: int | None
    event_hash: str
    events: int
    entry_id: int | None
    entry_hash: str
    entries: int


def lock_head() -> Head:
    """Lock the head (waiting for other ledger writers) and return it."""
    head, events, entries = table(LedgerHead), table(CorrectionEvent), table(BatchEntry)
    with connection.cursor() as cursor:
        # The row is created where a flush emptied the ledger's tables. Only then: the counts
        # scan both tables, which a ledger of millions of events pays on every write otherwise.
        cursor.execute(
            f"""INSERT INTO {head}
                    (id, event_id, event_hash, events, entry_id, entry_hash, entries, updated_at)
                SELECT 1, e.id, COALESCE(e.hash, %s), (SELECT count(*) FROM {events}),
                       n.id, COALESCE(n.hash, %s), (SELECT count(*) FROM {entries}), now()
                FROM (SELECT 1) seed
                LEFT JOIN LATERAL (SELECT id, hash FROM {events} ORDER BY id DESC LIMIT 1) e
                       ON true
                LEFT JOIN LATERAL (SELECT id, hash FROM {entries} ORDER BY id DESC LIMIT 1) n
                       ON true
                WHERE NOT EXISTS (SELECT 1 FROM {head} WHERE id = 1)
                ON CONFLICT (id) DO NOTHING""",
            [chain.GENESIS, chain.GENESIS],
        )
        cursor.execute(
            f"""SELECT event_id, event_hash, events, entry_id, entry_hash, entries
                FROM {head} WHERE id = 1 FOR UPDATE"""
        )
        return Head(*cursor.fetchone())


def read_head() -> Head | None:
    """The head as committed, without locking it (anchors, verify)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT event_id, event_hash, events, entry_id, entry_hash, entries
                FROM {table(LedgerHead)} WHERE id = 1"""
        )
        row = cursor.fetchone()
    return Head(*row) if row else None


def move_events(event_id: int, event_hash: str, added: int, at: datetime.datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {table(LedgerHead)}
                SET event_id = %s, event_hash = %s, events = events + %s, updated_at = %s
                WHERE id = 1""",
            [event_id, event_hash, added, at],
        )


def move_entries(entry_id: int, entry_hash: str, at: datetime.datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {table(LedgerHead)}
                SET entry_id = %s, entry_hash = %s, entries = entries + 1, updated_at = %s
                WHERE id = 1""",
            [entry_id, entry_hash, at],
        )
