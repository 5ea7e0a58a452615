"""The projector's bulk parameters and readers agree with PostgreSQL, whatever the values hold."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection

from ledger.sql import chunks, cursor, int_array, text_array

pytestmark = pytest.mark.django_db

AWKWARD = ['a"b', "back\\slash", "NULL", "null", "comma,brace}{", " spaced ", "", "ünï", None]


def _roundtrip(sql: str, param: str) -> list:
    with connection.cursor() as cur:
        cur.execute(sql, [param])
        return cur.fetchone()[0]


def test_text_arrays_keep_every_value_in_its_place():
    """Quotes, backslashes, separators and the word NULL cannot escape their element."""
    assert _roundtrip("SELECT %s::text[]", text_array(AWKWARD)) == AWKWARD


def test_timestamp_arrays_keep_the_instant():
    stamps = [
        datetime.datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=datetime.UTC),
        datetime.datetime(
            2026, 3, 29, 2, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=5))
        ),
        None,
    ]
    assert _roundtrip("SELECT %s::timestamptz[]", text_array(stamps)) == stamps


def test_int_arrays_take_only_integers():
    assert _roundtrip("SELECT %s::bigint[]", int_array([3, 1, 2**62])) == [3, 1, 2**62]
    assert _roundtrip("SELECT %s::bigint[]", int_array([])) == []
    with pytest.raises(ValueError):
        int_array(["1}'; DROP TABLE x; --"])


def test_the_fast_cursor_reads_the_same_instants_as_django():
    query = """SELECT t FROM (VALUES (timestamptz '2026-11-30 01:02:03.456789+00'),
                                     (timestamptz '1999-12-31 23:59:59+05:30'), (NULL)) v(t)"""
    with connection.cursor() as plain:
        plain.execute(query)
        expected = [t for (t,) in plain.fetchall()]
    with cursor() as fast:
        fast.execute(query)
        found = [t for (t,) in fast.fetchall()]
    assert found == expected
    assert all(t.tzinfo is not None and t.utcoffset() == datetime.timedelta(0) for t in found[:2])


def test_chunked_reads_return_every_row_in_order():
    with cursor(chunked=True) as fast:
        fast.execute("SELECT g FROM generate_series(1, 25003) g ORDER BY g")
        assert [g for (g,) in chunks(fast)] == list(range(1, 25004))
