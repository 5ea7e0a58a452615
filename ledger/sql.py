"""Bulk writes shared by the projector and the plan store.

Rows are streamed with COPY — the fastest way into PostgreSQL — under both drivers the ledger
supports: psycopg 3's ``cursor.copy`` and psycopg2's ``copy_expert``. COPY inserts rows in the
order given, so serial ids follow that order (the hash chain relies on it). Memory stays
bounded: psycopg 3 streams row by row, psycopg2 a buffer of :data:`CHUNK` rows at a time.
"""

from __future__ import annotations

import datetime
import io
import uuid
from collections.abc import Iterable, Sequence

from django.db import connection

CHUNK = 10_000


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _text(value) -> str:
    """One value in COPY's text format."""
    if value is None:
        return r"\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, int | uuid.UUID):
        return str(value)
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def insert_rows(model, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """COPY ``rows`` (tuples in ``columns`` order) into ``model``'s table; return the count."""
    sql = f"COPY {table(model)} ({', '.join(columns)}) FROM STDIN"
    count = 0
    with connection.cursor() as wrapper:
        raw = wrapper.cursor
        if hasattr(raw, "copy"):  # psycopg 3
            with raw.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            return count
        buffer = io.StringIO()  # psycopg2
        pending = 0
        for row in rows:
            buffer.write("\t".join(map(_text, row)) + "\n")
            pending += 1
            if pending == CHUNK:
                buffer.seek(0)
                raw.copy_expert(sql, buffer)
                count += pending
                buffer, pending = io.StringIO(), 0
        if pending:
            buffer.seek(0)
            raw.copy_expert(sql, buffer)
            count += pending
    return count


def db_now() -> datetime.datetime:
    """The database's clock. Every time the ledger records comes from it, not the app's."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def lock_rows_nowait(
    model,
    columns: Sequence[str],
    ids: Sequence[int],
    *,
    by: str = "id",
    strength: str = "NO KEY UPDATE",
) -> dict[int, tuple]:
    """Lock the rows whose ``by`` column is in ``ids`` (NOWAIT); return ``id -> columns``.

    NOWAIT: a row held by live traffic fails the statement at once with SQLSTATE 55P03 instead
    of queueing behind it, so the ledger never waits while holding locks a request may need.
    """
    found: dict[int, tuple] = {}
    ids = sorted(set(ids))
    with connection.cursor() as cursor:
        for start in range(0, len(ids), CHUNK):
            cursor.execute(
                f"""SELECT id, {", ".join(columns)} FROM {table(model)}
                    WHERE {by} = ANY(%s::bigint[]) ORDER BY id FOR {strength} NOWAIT""",
                [ids[start : start + CHUNK]],
            )
            for row in cursor.fetchall():
                found[row[0]] = row[1:]
    return found
