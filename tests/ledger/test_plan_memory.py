"""A large plan is held once: the shapes that keep planning's memory down give what the
list-based forms gave."""

from __future__ import annotations

import random

import pytest

from commcare_connect.opportunity.models import UserVisit
from ledger import digests, services
from ledger.errors import LedgerError
from ledger.models import CorrectionBatch, CorrectionEvent
from ledger.planners.rows import PlannedRow, plan_digest, with_expectations
from ledger.planners.visit_list import VisitListOptions, plan_visit_list
from ledger.pricing import Stamps
from ledger.sql import int_array, text_array
from ledger.state import latest_events, work_members


def _visit_ids(works) -> list[int]:
    return list(UserVisit.objects.filter(completed_work__in=works).values_list("pk", flat=True))


def test_with_expectations_fills_the_planners_list_in_place(capped):
    _, _, _, works = capped
    services.apply_batch(
        services.plan_visits("first", visit_ids=_visit_ids(works[:2])).batch,
    )
    rows = plan_visit_list(VisitListOptions(visit_ids=_visit_ids(works), to_status="rejected"))
    latest = latest_events((r.entity_kind, r.entity_id) for r in rows)
    members = work_members(r.entity_id for r in rows if r.entity_kind == "completed_work")
    expected = [
        r._replace(
            prev_event_id=latest.get(r.entity_kind, r.entity_id),
            members=members.get(r.entity_id) if r.entity_kind == "completed_work" else None,
        )
        for r in rows
    ]
    assert any(r.prev_event_id for r in expected) and any(r.members for r in expected)

    filled = with_expectations(rows)

    assert filled is rows  # no second copy of the plan
    assert filled == expected


def test_undo_rows_carry_the_dates_their_events_overwrote(capped):
    _, _, _, works = capped
    batch = services.plan_visits("first", visit_ids=_visit_ids(works)).batch
    services.apply_batch(batch)
    original = CorrectionBatch.objects.get(pk=batch)

    rows, stamps = services._undo_rows(original)

    events = CorrectionEvent.objects.filter(batch=original)
    assert len(rows) == events.count() > 0
    assert isinstance(stamps, Stamps)
    assert dict(stamps) == {
        (e.entity_kind, e.entity_id): e.prior_status_modified_date for e in events
    }
    assert all(stamps[(r.entity_kind, r.entity_id)] == stamps.get((r.entity_kind, r.entity_id))
               for r in rows)  # fmt: skip
    assert ("visit", -1) not in stamps and stamps.get(("nothing", 1), "x") == "x"
    # In digest order, and the same digest as the database computes from the same rows.
    assert rows == sorted(rows, key=lambda r: (r.entity_kind, r.entity_id))
    with services.connection.cursor() as cursor:
        cursor.execute(digests.sql_of_rows(services._undo_rows_sql()), [original.pk])
        assert plan_digest(rows, presorted=True) == cursor.fetchone()[0]


def _random_rows(rng: random.Random, n: int) -> list[PlannedRow]:
    rows = []
    for pk in rng.sample(range(1, 10 * n), n):
        kind = rng.choice(("visit", "completed_work"))
        rows.append(
            PlannedRow(
                kind, pk, rng.choice((None, pk)), rng.randint(1, 5), rng.choice((None, 7)),
                rng.choice((None, "", f"x{pk}")), "approved", "over_limit",
                rng.choice(("", "trial")), rng.random() < 0.5, rng.choice((None, pk + 1)),
                rng.choice((None, "", f"{pk}:approved")), rng.random() < 0.5,
                rng.random() < 0.5,
            )
        )  # fmt: skip
    return rows


def test_plan_digest_sorts_as_by_kind_then_id():
    rng = random.Random(7)
    for n in (0, 1, 2, 50, 1000):
        rows = _random_rows(rng, n)
        by_key = sorted(rows, key=lambda r: (r.entity_kind, r.entity_id))
        assert plan_digest(rows) == digests.plan_digest(by_key)
        assert plan_digest(by_key, presorted=True) == digests.plan_digest(by_key)


def test_array_text_is_the_same_joined_in_chunks():
    ids = list(range(-5, 25_003))
    assert int_array(ids) == "{" + ",".join(map(str, ids)) + "}"
    assert int_array(iter(ids)) == int_array(ids)
    assert int_array([]) == "{}"
    texts = [None, 'a"b', "c\\d", *map(str, range(20_001))]
    quoted = ['"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts[1:]]
    assert text_array(texts) == "{" + ",".join(["NULL", *quoted]) + "}"


# -- an undo plan the database holds ------------------------------------------------------------


def test_an_undo_plan_held_by_the_database_matches_the_rows_read_into_python(capped):
    """The undo plan the database holds (priced, digested, counted and stored in SQL) is the
    plan of the same rows read into Python and priced by the host's own code."""
    _, _, access, works = capped
    batch = services.plan_visits("first", visit_ids=_visit_ids(works), expand=True).batch
    services.apply_batch(batch)
    original = CorrectionBatch.objects.get(pk=batch)
    rows, _ = services._undo_rows(original)

    held = services.plan_undo(batch, "undo")
    stored = CorrectionBatch.objects.get(pk=held.batch)
    services.discard_batch(held.batch)
    exact = services.plan_undo(batch, "undo", exact=True)

    assert held.plan_digest == stored.plan_digest == plan_digest(rows) == exact.plan_digest
    assert held.totals == exact.totals and held.totals.visits == len(works) * 2
    assert held.accesses == exact.accesses and held.exclusions == exact.exclusions
    assert stored.changes.count() == len(rows)


@pytest.mark.django_db(transaction=True)
def test_an_undo_plan_refuses_rows_that_changed_while_it_was_priced(capped, raw_connection):
    """The held rows are read again to be stored: a work paid by another session while the
    plan is priced (its row now says paid) makes them differ from the rows priced and
    digested, and the plan is refused with nothing stored."""
    from commcare_connect.opportunity.models import CompletedWork

    _, _, _, works = capped
    batch = services.plan_visits("first", visit_ids=_visit_ids(works), expand=True).batch
    services.apply_batch(batch)
    paid = []

    def pay_one_meanwhile(message: str) -> None:
        if not paid:
            paid.append(works[-1].pk)
            raw_connection.execute(
                f"UPDATE {CompletedWork._meta.db_table} SET payment_date = now() WHERE id = %s",
                [works[-1].pk],
            )

    before = CorrectionBatch.objects.count()
    with pytest.raises(LedgerError, match="changed while it was priced"):
        services.plan_undo(batch, "undo", progress=pay_one_meanwhile)
    assert paid and CorrectionBatch.objects.count() == before
    assert services.plan_undo(batch, "undo").batch  # planned again, it holds


# -- a visit list planned in the database -------------------------------------------------------


def _held(opts: VisitListOptions) -> tuple[list[PlannedRow], str]:
    from django.db import connection

    from ledger.planners.held import STAGED
    from ledger.planners.visit_list import staged_visit_list

    with staged_visit_list(opts) as held, connection.cursor() as cur:
        cur.execute(f"SELECT * FROM {STAGED}")
        rows = [PlannedRow._make(values[:-1]) for values in cur.fetchall()]
        digest = held.digest()
    return _by_entity(rows), digest


def _by_entity(rows: list[PlannedRow]) -> list[PlannedRow]:
    return sorted(rows, key=lambda r: (r.entity_kind, r.entity_id))


def _outcome(plan) -> tuple:
    try:
        return plan()
    except LedgerError as error:
        return ("refused", str(error))


def test_a_visit_list_held_by_the_database_is_the_plan_read_into_python(host, capped):
    """The staged plan (rows and expectations written by one SQL statement) holds the same
    rows, digest and refusals as the planner that reads them into Python, whatever the list:
    some or all visits of works, expanded or not, visits already at the target or in trial,
    paid works, entities with earlier ledger events, by visit id or by xform id."""
    from commcare_connect.opportunity.models import CompletedWork

    opp, unit, access, works = capped
    services.apply_batch(services.plan_visits("first", visit_ids=_visit_ids(works[:2])).batch)
    visits = list(UserVisit.objects.filter(completed_work__in=works).order_by("pk"))
    UserVisit.objects.filter(pk=visits[-1].pk).update(status="trial")
    CompletedWork.objects.filter(pk=works[1].pk).update(payment_date="2026-03-02T00:00:00Z")
    other = host.access(opp, caps={unit: 1})
    extra = host.approved_work(other, unit)
    ids = [v.pk for v in visits] + _visit_ids([extra])
    cases = [
        VisitListOptions(visit_ids=ids, to_status="rejected"),
        VisitListOptions(visit_ids=ids, to_status="approved"),
        VisitListOptions(visit_ids=ids[::2], to_status="rejected"),
        VisitListOptions(visit_ids=ids[::2], to_status="pending", expand=True),
        VisitListOptions(visit_ids=ids[:3], to_status="over_limit", expand=True),
        VisitListOptions(
            xform_ids=[v.xform_id for v in visits[1:]], to_status="rejected", expand=True
        ),  # fmt: skip
        VisitListOptions(visit_ids=ids, to_status="nonsense"),
        VisitListOptions(visit_ids=[10**12], to_status="rejected"),
    ]
    refused = 0
    for opts in cases:

        def in_python(opts=opts):
            rows = with_expectations(plan_visit_list(opts))
            return _by_entity(rows), plan_digest(rows)

        expected = _outcome(in_python)
        assert _outcome(lambda opts=opts: _held(opts)) == expected, opts
        refused += expected[0] == "refused"
        if expected[0] != "refused":
            assert any(r.prev_event_id for r in expected[0]) or opts.visit_ids != ids
    assert 0 < refused < len(cases)
