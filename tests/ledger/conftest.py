"""Fixtures for the ledger's tests: incident data and a way to run the command."""

from __future__ import annotations

import pytest

from commcare_connect.demo.incident import IncidentData, build_incident
from ledger.models import CorrectionBatch, CorrectionEvent, PlannedChange
from ledger.testing import run_corrections


def ledger_counts() -> tuple[int, int, int]:
    return (
        CorrectionBatch.objects.count(),
        CorrectionEvent.objects.count(),
        PlannedChange.objects.count(),
    )


@pytest.fixture
def incident(db) -> IncidentData:
    return build_incident()


@pytest.fixture
def run():
    return run_corrections


@pytest.fixture
def make_capped_access(host):
    """An opportunity whose one payment unit has ``deliver_units`` forms per earned unit, and a
    worker who submitted ``works`` entities against a cap of ``cap`` works — through the host's
    processor with the duplicate-flag bug on, so works past the cap come out approved."""
    import datetime

    from django.test.utils import override_settings

    from commcare_connect.form_receiver.processor import process_deliver_unit
    from commcare_connect.opportunity.models import OpportunityAccess
    from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user

    def make(works: int, cap: int, deliver_units: int = 2) -> OpportunityAccess:
        opp = host.opportunity()
        unit = host.unit(opp, amount=100, org_amount=10, required=deliver_units)
        access = host.access(opp, caps={unit: cap})
        start = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
        with override_settings(CCC_REPRODUCE_DUPLICATE_FLAG_BUG=True):
            for e in range(works):
                received = start + datetime.timedelta(minutes=e)
                for form in unit.required:
                    process_deliver_unit(
                        access, form, xform_id=f"x-{access.pk}-{e}-{form.pk}", entity_id=f"e-{e}",
                        visit_date=received, received_at=received, recompute=False,
                    )  # fmt: skip
        update_payment_accrued_for_user(access, incremental=False)
        access.refresh_from_db()
        return access

    return make


def settle(*accesses) -> None:
    """The host's full recompute of each access, as after a day of submissions."""
    from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user

    for access in accesses:
        update_payment_accrued_for_user(access, incremental=False)
        access.refresh_from_db()


@pytest.fixture
def capped(host):
    """One worker, one unit with two forms, cap 2, four approved works (two over the cap)."""
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, org_amount=10, required=2)
    access = host.access(opp, caps={unit: 2})
    works = [host.approved_work(access, unit) for _ in range(4)]
    settle(access)
    return opp, unit, access, works


def one_over_cap(host):
    """An opportunity with one worker of one one-form unit, cap 1 and three approved works."""
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, required=1)
    access = host.access(opp, caps={unit: 1})
    for _ in range(3):
        host.approved_work(access, unit)
    settle(access)
    return opp, access


def plan_over_cap(run, opp, *extra: str) -> dict:
    """``corrections plan over-cap`` of one opportunity; its JSON report."""
    result = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "over cap",
        *extra, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    return result.json
