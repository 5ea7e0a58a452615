"""Every history lookup is index-backed: EXPLAIN on 20 000 events after ANALYZE."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection

from ledger import admin as ledger_admin
from ledger import selectors, verify
from ledger.models import CorrectionEvent

from .conftest import insert_events, make_batch

EVENTS = CorrectionEvent._meta.db_table
N_EVENTS = 20_000
T0 = datetime.datetime(2026, 5, 1, tzinfo=datetime.UTC)


@pytest.fixture
def many_events(db):
    """20k events over 100 batches, 200 opportunities, 2 000 accesses; visits in pairs with
    their completed work, as the projector writes them."""
    batches = [make_batch() for _ in range(100)]
    per_batch = N_EVENTS // len(batches)
    for b, batch in enumerate(batches):

        def rows(b=b):
            for i in range(per_batch):
                n = b * per_batch + i
                work = 1_000_000 + n // 3
                is_work = n % 3 == 0
                yield {
                    "entity_kind": "completed_work" if is_work else "visit",
                    "entity_id": work if is_work else 2_000_000 + n,
                    "completed_work_id": work,
                    "opportunity_id": 1 + (n // 3) % 200,
                    "access_id": 10_000 + (n // 3) % 2000,
                    "xform_id": None if is_work else f"xform-{n}",
                    "from_status": "approved",
                    "to_status": "over_limit",
                    "recorded_at": T0 + datetime.timedelta(seconds=n),
                }

        insert_events(batch, rows())
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {EVENTS}")
    return batches


def _plan(sql: str, params) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def _assert_indexed(plan: str, *indexes: str) -> None:
    """No sequential scan of the events; each of ``indexes`` (``a|b``: either) is used."""
    assert f"Seq Scan on {EVENTS}" not in plan, plan
    for index in indexes:
        assert any(name in plan for name in index.split("|")), plan


# The foreign key's own index on batch_id serves as well as (batch_id, id).
BATCH_INDEX = "ledger_event_batch|ledger_correctionevent_batch_id"
LOOKUPS = [
    ("visit", "2000001", ["ledger_event_entity"]),
    ("xform_id", "xform-4", ["ledger_event_xform"]),
    ("completed_work", "1000005", ["ledger_event_work", "ledger_event_entity"]),
    ("access", "10007", ["ledger_event_access"]),
    ("opportunity", "17", ["ledger_event_opportunity"]),
    ("batch", None, [BATCH_INDEX]),
]


def test_lookups_are_index_backed_at_scale(many_events):
    for kind, value, indexes in LOOKUPS:
        value = value or str(many_events[42].pk)
        resolved = selectors.resolve(kind, value)
        plan = _plan(*selectors.history_sql(resolved))
        print(f"\n--- history --{kind} {value}\n{plan}")
        # Lineage joins go through the unique indexes of inverts / reverts, not scans.
        _assert_indexed(plan, *indexes)

        sql, params = selectors._as_of_sql(resolved)
        as_of_plan = _plan(sql, [*params, T0])
        print(f"--- history --{kind} {value} --as-of\n{as_of_plan}")
        _assert_indexed(as_of_plan, "ledger_event_entity", *indexes)

        assert list(selectors.iter_history(resolved))  # and it answers

    # Batch listing, time-range export, admin filters and counts, verify — same data.
    listing = _plan(selectors._batch_sql("") + " ORDER BY b.created_at DESC LIMIT 200", [])
    _assert_indexed(listing, BATCH_INDEX)
    since = CorrectionEvent.objects.filter(recorded_at__gte=T0 + datetime.timedelta(hours=5))
    _assert_indexed(since.order_by("id").explain(), "ledger_event_recorded")

    events = CorrectionEvent.objects.order_by("-id")
    _assert_indexed(events.filter(opportunity_id=17)[:100].explain(), "ledger_event_opportunity")
    search = ledger_admin._search_filter("2000001")
    _assert_indexed(events.filter(search)[:100].explain(), "ledger_event_entity")
    _assert_indexed(events.filter(batch_id=many_events[3].pk)[:100].explain(), BATCH_INDEX)

    unfiltered = ledger_admin.EstimatedCountPaginator(events, 100)
    assert abs(unfiltered.count - N_EVENTS) < N_EVENTS * 0.1  # pg_class estimate, no count
    small = ledger_admin.EstimatedCountPaginator(events.filter(opportunity_id=17), 100)
    assert small.count == CorrectionEvent.objects.filter(opportunity_id=17).count()
    big = ledger_admin.EstimatedCountPaginator(events.filter(entity_kind="visit"), 100)
    assert big.count > ledger_admin.EXACT_COUNT_UP_TO  # planner estimate beyond the cap

    report = verify.run_checks(["chain", "continuity", "batches"])
    assert report.ok, report.problems[:3]
    assert report.head.events == N_EVENTS
