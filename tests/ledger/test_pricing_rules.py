"""Pricing by the projection of the host's rules: what it refuses, what it says, how it reads."""

from __future__ import annotations

import copy
import datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction

from commcare_connect.opportunity.models import (
    CompletedWork,
    ExchangeRate,
    OpportunityAccess,
    UserVisit,
)
from commcare_connect.opportunity.utils.completed_work import update_status
from ledger import pricing
from ledger.models import CorrectionBatch
from ledger.planners.visit_list import VisitListOptions, plan_visit_list
from ledger.sql import read_only_snapshot


def _plan_visit(run, visit: UserVisit, tmp_path, *extra: str):
    ids = tmp_path / "visits.txt"
    ids.write_text(f"{visit.pk}\n")
    return run(
        "plan", "visits", "--visit-ids", str(ids), "--expand", "--reason", "test", "--json", *extra
    )


def test_a_rate_missing_for_an_old_day_is_refused_before_anything_is_stored(host, run, tmp_path):
    """An approved work the flips do not touch is priced again at the rate of its own day; with
    no rate stored on or before it the host would fetch one over the network mid-recompute."""
    ExchangeRate.objects.create(
        currency_code="KES", rate_date=datetime.date(2026, 1, 1), rate=Decimal("129.5")
    )
    opp = host.opportunity(currency="KES")
    unit = host.unit(opp)
    access = host.access(opp)
    old = host.work(access, unit, status="approved", visits=unit.required)
    CompletedWork.objects.filter(pk=old.pk).update(
        status_modified_date=datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    )
    flipped = host.work(access, unit, status="approved", visits=unit.required)
    visit = UserVisit.objects.get(completed_work=flipped)
    batches = CorrectionBatch.objects.count()

    result = _plan_visit(run, visit, tmp_path)
    assert result.code == 3, result.err
    assert "no stored exchange rate for KES on or before 2025-06-01" in result.err
    assert "external rates service" in result.err
    assert CorrectionBatch.objects.count() == batches


def test_an_access_whose_recompute_depends_on_the_order_is_named(host, run, tmp_path):
    """Top → middle → bottom units; the worker worked top and middle for one entity, never
    bottom. The host counts the middle work 1 when its walk meets it first, 0 when it meets it
    through the top work (the model's count is capped by the bottom unit, with no work): the
    result depends on the order of the host's unordered query. The plan says so, and prices in
    id order, as plan --exact does."""
    opp = host.opportunity()
    top = host.unit(opp, amount=100, org_amount=0)
    middle = host.unit(opp, amount=50, org_amount=0, parent=top)
    host.unit(opp, amount=10, org_amount=0, parent=middle)  # never worked
    access = host.access(opp)
    host.work(access, middle, entity_id="e1", status="approved", visits=middle.required)
    host.work(access, top, entity_id="e1", status="approved", visits=top.required)
    other = host.work(access, top, entity_id="e2", status="approved", visits=top.required)
    visit = UserVisit.objects.get(completed_work=other)

    plan = _plan_visit(run, visit, tmp_path).json
    assert any(f"({access.pk})" in note and "order" in note for note in plan["notes"])
    (line,) = plan["accesses"]
    assert line["projected_accrual"] == 150  # id order: middle 50, top 100, e2 over_limit

    rows = plan_visit_list(VisitListOptions(visit_ids=[visit.pk], expand=True))
    projected = pricing.price(rows)
    exact = pricing.price(rows, exact=True)
    assert projected.prices[access.pk] == exact.prices[access.pk]
    assert projected.order_dependent == exact.order_dependent == {access.pk}

    # The host's own code in the other order gives another accrual.
    with transaction.atomic():
        CompletedWork.objects.filter(pk=other.pk).update(status="over_limit")
        UserVisit.objects.filter(pk=visit.pk).update(status="over_limit")
        works = CompletedWork.objects.filter(opportunity_access=access).order_by("-id")
        scratch = copy.copy(OpportunityAccess.objects.get(pk=access.pk))
        update_status(works.select_related("payment_unit"), scratch)
        transaction.set_rollback(True)
    assert scratch.payment_accrued == 0


@pytest.mark.django_db(transaction=True)
def test_pricing_reads_in_a_read_only_snapshot():
    with read_only_snapshot():
        with connection.cursor() as cursor:
            cursor.execute("SHOW transaction_isolation")
            assert cursor.fetchone()[0] == "repeatable read"
            cursor.execute("SHOW transaction_read_only")
            assert cursor.fetchone()[0] == "on"
            with pytest.raises(DatabaseError, match="read-only transaction"):
                with transaction.atomic():
                    cursor.execute(f"UPDATE {CompletedWork._meta.db_table} SET status = status")
