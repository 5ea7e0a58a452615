"""``update_status`` against the host's own ``CompletedWorkUpdater``, on random data.

The host's ``commcare_connect/opportunity/utils/completed_work.py`` is loaded from a checkout of
the host (``HOST_CHECKOUT``, default ``/work/host``) and run against this stand-in's models —
they carry the same names, fields and model properties. Each random scenario runs the host's
function and this project's on the same rows (the first in a rolled-back savepoint) with the
clock frozen, and compares every column the recompute writes and the access's accrual. Skipped
when no checkout is there.
"""

from __future__ import annotations

import datetime
import random
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Case, IntegerField, Value, When

from commcare_connect.opportunity import models as host_models
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    ExchangeRate,
    OpportunityAccess,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.utils.completed_work import update_status

FROZEN = datetime.datetime(2026, 6, 15, 12, 0, tzinfo=datetime.UTC)
COLUMNS = [
    "id",
    "status",
    "reason",
    "status_modified_date",
    "saved_completed_count",
    "saved_approved_count",
    "saved_payment_accrued",
    "saved_payment_accrued_usd",
    "saved_org_payment_accrued",
    "saved_org_payment_accrued_usd",
]


@pytest.fixture
def host_update_status(host_completed_work):
    return host_completed_work.update_status


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(host_models, "now", lambda: FROZEN)


def _rates():
    for day, rate in [
        (datetime.date(2020, 1, 1), "8"),  # 1 / 8 = 0.125: rounds half away from zero
        (datetime.date(2026, 1, 1), "129.5"),
        (datetime.date(2026, 4, 1), "131.25"),
    ]:
        ExchangeRate.objects.update_or_create(
            currency_code="XTS", rate_date=day, defaults={"rate": Decimal(rate)}
        )


def _scenario(host, rng: random.Random):
    """An access with a random tree of payment units, works and visits; returns the access."""
    opp = host.opportunity(
        # XBA has no stored rate (the host would fetch one); None makes the host raise.
        currency=rng.choice(["USD", "XTS", "XTS", "XTS", "XBA", None]),
        auto_approve_payments=rng.random() < 0.8,
    )
    units = []
    for _ in range(rng.randint(1, 4)):
        parent = rng.choice(units) if units and rng.random() < 0.7 else None
        units.append(
            host.unit(
                opp,
                amount=rng.choice([1, 7, 100, 333]),
                org_amount=rng.choice([0, 3, 20]),
                required=rng.choice([0, 1, 1, 2]),
                optional=rng.choice([0, 0, 1, 2]),
                parent=parent,
            )
        )
    access = host.access(opp)
    other_access = host.access(opp)
    forms = [du for unit in units for du in unit.forms]
    for e in range(rng.randint(1, 4)):
        entity = rng.choice([f"entity-{e}", f"entity-{e}", f"entity-{e}", None])
        for unit in units:
            if rng.random() < 0.2:
                continue
            who = access if rng.random() < 0.9 else other_access
            if (
                CompletedWork.objects.filter(
                    opportunity_access=who, payment_unit=unit.payment_unit, entity_id=entity
                ).exists()
                and entity is not None
            ):
                continue
            stamp = rng.choice(
                [
                    None,
                    datetime.datetime(2025, 2, 3, 23, 30, tzinfo=datetime.UTC),
                    datetime.datetime(2026, 2, 3, 23, 30, tzinfo=datetime.UTC),
                    FROZEN,
                ]
            )
            work = host.work(
                who,
                unit,
                entity_id=entity or f"x-{e}",
                status=rng.choice(list(CompletedWorkStatus.values)),
                status_modified_date=stamp,
            )
            if entity is None:
                CompletedWork.objects.filter(pk=work.pk).update(entity_id=None)
                work.entity_id = None
            for _ in range(rng.choice([0, 1, 2, 2, 3, 4, 5])):
                # Mostly a form of the work's own unit, sometimes one of another unit.
                pool = unit.forms if unit.forms and rng.random() < 0.9 else forms
                if not pool:
                    continue
                du = rng.choice(pool)
                host.visit(
                    work,
                    du,
                    status=rng.choice([*VisitValidationStatus.values, "approved", "approved"]),
                    review_status=rng.choice([*VisitReviewStatus.values, "agree", "agree"]),
                    reason=rng.choice([None, "", "GPS off", "No photo"]),
                )
    return access


def _selection(access, rng: random.Random):
    """A random subset of the access's works in a random order, as a queryset."""
    ids = list(CompletedWork.objects.filter(opportunity_access=access).values_list("id", flat=True))
    rng.shuffle(ids)
    if rng.random() < 0.3:
        ids = ids[: rng.randint(0, len(ids))]
    order = Case(
        *[When(id=pk, then=Value(i)) for i, pk in enumerate(ids)],
        output_field=IntegerField(),
    )
    queryset = CompletedWork.objects.filter(id__in=ids)
    if ids:
        queryset = queryset.order_by(order)
    if rng.random() < 0.5:
        queryset = queryset.select_related("payment_unit")
    return lambda: queryset.all()


def _state(access_id: int):
    works = CompletedWork.objects.order_by("id")  # every work of the scenario
    return (
        list(works.values_list(*COLUMNS)),
        OpportunityAccess.objects.get(pk=access_id).payment_accrued,
    )


def _run(function, access_id: int, make_queryset, compute_payment: bool):
    access = OpportunityAccess.objects.get(pk=access_id)
    try:
        function(make_queryset(), access, compute_payment=compute_payment)
    except Exception as error:  # noqa: BLE001 - compared between the two implementations
        return ("raised", type(error).__name__)
    return ("ok", access.payment_accrued, _state(access_id))


@pytest.mark.parametrize("seed", range(120))
def test_same_results_as_the_host(host, host_update_status, frozen_clock, seed):
    rng = random.Random(seed)
    _rates()
    access = _scenario(host, rng)
    make_queryset = _selection(access, rng)
    compute_payment = rng.random() < 0.8

    with transaction.atomic():
        expected = _run(host_update_status, access.pk, make_queryset, compute_payment)
        transaction.set_rollback(True)
    actual = _run(update_status, access.pk, make_queryset, compute_payment)
    assert actual == expected
