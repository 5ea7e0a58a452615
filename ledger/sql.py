"""Set-based writes shared by the projector and the plan store.

Rows go to PostgreSQL as one array per column (``INSERT … SELECT FROM unnest(…)``), a chunk at
a time: one round trip per 10,000 rows, memory bounded by the chunk, and it works the same under
psycopg2 and psycopg 3 (no driver-specific COPY).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.db import connection

CHUNK = 10_000


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def insert_rows(
    model, columns: Sequence[str], types: Sequence[str], rows: Iterable[Sequence]
) -> int:
    """Insert ``rows`` (tuples in ``columns`` order) in order; ids follow the row order."""
    names = ", ".join(f"c{i}" for i in range(len(columns)))
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    sql = (
        f"INSERT INTO {table(model)} ({', '.join(columns)}) "
        f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS u({names}, ord) ORDER BY ord"
    )
    count = 0
    chunk: list[Sequence] = []
    with connection.cursor() as cursor:
        for row in rows:
            chunk.append(row)
            if len(chunk) == CHUNK:
                cursor.execute(sql, [list(col) for col in zip(*chunk, strict=True)])
                count += len(chunk)
                chunk = []
        if chunk:
            cursor.execute(sql, [list(col) for col in zip(*chunk, strict=True)])
            count += len(chunk)
    return count
