"""Bulk writes shared by the projector and the plan store.

Rows are streamed with COPY — the fastest way into PostgreSQL — under both drivers the ledger
supports: psycopg 3's ``cursor.copy`` and psycopg2's ``copy_expert``. COPY inserts rows in the
order given, so serial ids follow that order (the hash chain relies on it). Memory stays
bounded: psycopg 3 streams row by row, psycopg2 a buffer of :data:`CHUNK` rows at a time.
"""

from __future__ import annotations

import datetime
import io
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice

from django.db import connection, transaction

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


def reserve_ids(model, count: int) -> list[int]:
    """``count`` ids from the sequence behind ``model``'s id, in increasing order.

    For rows whose id must be known before they are written (an event's id is hashed). The
    ids need not be consecutive: only their order matters.
    """
    if count <= 0:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT nextval(s.name) FROM (SELECT pg_get_serial_sequence(%s, 'id') AS name) s,
                      generate_series(1, %s)""",
            [connection.ops.quote_name(model._meta.db_table), count],
        )
        return sorted(pk for (pk,) in cursor.fetchall())


def int_array(values: Iterable[int]) -> str:
    """An array parameter as PostgreSQL's array text, for ``%s::bigint[]``.

    The drivers build array parameters element by element in Python (psycopg 3's list dumper
    is not compiled); one joined string is about five times faster for a batch's hundred
    thousand ids, and reads the same under both drivers.
    """
    return _joined(map(str, map(int, values)))


def _joined(texts: Iterator[str]) -> str:
    """``{a,b,…}``, joined a chunk at a time: ``join`` would first hold every item's text."""
    parts = []
    while chunk := list(islice(texts, CHUNK)):
        parts.append(",".join(chunk))
    return "{" + ",".join(parts) + "}"


def _array_item(value) -> str:
    if value is None:
        return "NULL"
    text = value.isoformat() if isinstance(value, datetime.datetime) else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Iterable) -> str:
    """Strings or datetimes (None for NULL) as array text, for ``%s::text[]`` or
    ``%s::timestamptz[]``; every element quoted, so no value can break out of its place."""
    return _joined(map(_array_item, values))


@contextmanager
def cursor(*, chunked: bool = False) -> Iterator:
    """A cursor that reads ``timestamptz`` values with the driver's compiled parser.

    Django's psycopg 3 backend replaces the parser with a Python one that re-attaches the
    connection's time zone, about seven times slower; the projector reads a timestamp per
    locked row, hundreds of thousands per batch. Both give aware datetimes of the same
    instant (the connection's time zone is UTC under ``USE_TZ``), and the change applies to
    this cursor only. Under psycopg2 it is a plain cursor. ``chunked`` gives a server-side
    cursor (inside a transaction) to read large results a :data:`CHUNK` at a time through
    :func:`chunks`.
    """
    with connection.chunked_cursor() if chunked else connection.cursor() as wrapper:
        raw = wrapper.cursor
        adapters = getattr(raw, "adapters", None)
        if adapters is not None:  # psycopg 3
            import psycopg
            from psycopg.pq import Format

            oid = psycopg.adapters.types["timestamptz"].oid
            adapters.register_loader(oid, psycopg.adapters.get_loader(oid, Format.TEXT))
        yield wrapper


def chunks(cur, size: int = CHUNK) -> Iterator[tuple]:
    """The rows of an executed query, fetched ``size`` at a time."""
    while rows := cur.fetchmany(size):
        yield from rows


def db_now() -> datetime.datetime:
    """The database's clock. Every time the ledger records comes from it, not the app's."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


POLL = 0.01  # seconds between rounds of attempts on rows still held by live traffic


def shared_strings(values: Sequence, at: Iterable[int] | None = None) -> tuple:
    """``values`` with their strings (those at the positions ``at``, or all) interned.

    For rows held by the hundred thousand (a batch's flips, its locked rows): kinds and
    statuses are a handful of values, and one shared object each instead of one per row keeps
    a large batch's memory down. Unique strings (xform ids) are left out through ``at``.
    """
    if at is None:
        return tuple(sys.intern(v) if type(v) is str else v for v in values)
    row = list(values)
    for i in at:
        if type(row[i]) is str:
            row[i] = sys.intern(row[i])
    return tuple(row)


def lock_rows_patiently(
    model,
    columns: Sequence[str],
    ids: Sequence[int],
    *,
    strength: str = "NO KEY UPDATE",
    deadline: float,
    busy: list[int] | None = None,
) -> dict[int, tuple]:
    """Lock rows by id without ever waiting on a lock; return ``id -> columns``.

    Each round takes the free rows (``SKIP LOCKED``) and keeps them; rows held by live traffic
    are tried again a moment later, as their requests commit. The ledger never queues behind a
    request, so it can never be one side of a deadlock with one. Past ``deadline``
    (``time.monotonic()``) the rows still held elsewhere are added to ``busy`` when a list is
    given (the caller leaves them alone); otherwise it gives up with ``LockBusy`` — the
    caller's transaction rolls back, freeing what was taken. Ids with no row are left out.
    """
    import time

    from ledger.errors import LockBusy

    found: dict[int, tuple] = {}
    missing = sorted(set(ids))
    with cursor() as cur:
        while missing:
            for start in range(0, len(missing), CHUNK):
                cur.execute(
                    f"""SELECT id, {", ".join(columns)} FROM {table(model)}
                        WHERE id = ANY(%s::bigint[]) ORDER BY id FOR {strength} SKIP LOCKED""",
                    [int_array(missing[start : start + CHUNK])],
                )
                for row in cur:
                    found[row[0]] = shared_strings(row[1:])
            left = [pk for pk in missing if pk not in found]
            if not left:
                break
            cur.execute(
                f"SELECT id FROM {table(model)} WHERE id = ANY(%s::bigint[])", [int_array(left)]
            )
            held = sorted(pk for (pk,) in cur.fetchall())
            if held and time.monotonic() >= deadline:
                if busy is not None:
                    busy.extend(held)
                    break
                raise LockBusy(
                    f"{len(held)} {model._meta.verbose_name_plural} are held by live traffic "
                    f"(first: {held[0]})"
                )
            missing = held
            if missing:
                time.sleep(POLL)
    return found


def lock_ids_patiently(
    model,
    ids: Sequence[int],
    *,
    strength: str = "NO KEY UPDATE",
    deadline: float,
    busy: list[int] | None = None,
) -> None:
    """Lock rows by id without ever waiting on a lock, keeping nothing but the ids still
    busy: :func:`lock_rows_patiently` for a batch's hundreds of thousands of rows, whose
    state is read later in SQL."""
    import time

    from ledger.errors import LockBusy

    missing = sorted(set(ids))
    with cursor() as cur:
        while missing:
            got: set[int] = set()
            for start in range(0, len(missing), CHUNK):
                cur.execute(
                    f"""SELECT id FROM {table(model)} WHERE id = ANY(%s::bigint[])
                        FOR {strength} SKIP LOCKED""",
                    [int_array(missing[start : start + CHUNK])],
                )
                got.update(pk for (pk,) in cur.fetchall())
            left = [pk for pk in missing if pk not in got]
            if not left:
                return
            cur.execute(
                f"SELECT id FROM {table(model)} WHERE id = ANY(%s::bigint[]) ORDER BY id",
                [int_array(left)],
            )
            held = [pk for (pk,) in cur.fetchall()]
            if held and time.monotonic() >= deadline:
                if busy is not None:
                    busy.extend(held)
                    return
                raise LockBusy(
                    f"{len(held)} {model._meta.verbose_name_plural} are held by live traffic "
                    f"(first: {held[0]})"
                )
            missing = held
            if missing:
                time.sleep(POLL)


def ids_where(model, column: str, values: Sequence[int]) -> list[int]:
    """Ids of ``model`` rows whose ``column`` is in ``values`` (a plain read, no lock)."""
    if not values:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {table(model)} WHERE {column} = ANY(%s::bigint[])",
            [int_array(values)],
        )
        return [pk for (pk,) in cursor.fetchall()]


@contextmanager
def read_only_snapshot() -> Iterator[None]:
    """One consistent view of the database for several reads, taking no lock.

    A transaction of its own, ``REPEATABLE READ, READ ONLY``: every statement sees the same
    snapshot and the database refuses any write. Inside a caller's transaction
    (``ATOMIC_REQUESTS``, a test case) the reads run in it, at its isolation level.
    """
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


@contextmanager
def local_settings(values: Mapping[str, str]) -> Iterator[None]:
    """Settings for the statements inside, local to the current transaction; the previous
    values come back after, so a caller's own transaction is left as it was. (A block that
    fails leaves its transaction to be rolled back, which undoes them anyway.)"""
    names = list(values)
    with connection.cursor() as cur:
        cur.execute(f"SELECT {', '.join(['current_setting(%s)'] * len(names))}", names)
        previous = cur.fetchone()
        _set_local(cur, zip(names, (values[n] for n in names), strict=True))
    yield
    with connection.cursor() as cur:
        _set_local(cur, zip(names, previous, strict=True))


def _set_local(cur, pairs: Iterable[tuple[str, str]]) -> None:
    pairs = list(pairs)
    cur.execute(
        f"SELECT {', '.join(['set_config(%s, %s, true)'] * len(pairs))}",
        [item for pair in pairs for item in pair],
    )
