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
def make_capped_access(db):
    """An opportunity whose one payment unit has ``deliver_units`` forms per earned unit, and a
    worker who submitted ``works`` entities against a cap of ``cap`` works — through the host's
    processor with the duplicate-flag bug on, so works past the cap come out approved."""
    import datetime
    import itertools

    from django.test.utils import override_settings

    from commcare_connect.form_receiver.processor import process_deliver_unit
    from commcare_connect.opportunity.models import (
        DeliverUnit,
        Opportunity,
        OpportunityAccess,
        OpportunityClaim,
        OpportunityClaimLimit,
        OpportunityVerificationFlags,
        PaymentUnit,
    )
    from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
    from commcare_connect.organization.models import Organization
    from commcare_connect.users.models import User

    counter = itertools.count()

    def make(works: int, cap: int, deliver_units: int = 2) -> OpportunityAccess:
        n = next(counter)
        org = Organization.objects.create(name=f"Org {n}", slug=f"org-capped-{n}")
        opp = Opportunity.objects.create(organization=org, name=f"Capped {n}", is_test=False)
        OpportunityVerificationFlags.objects.create(opportunity=opp, duplicate=False)
        unit = PaymentUnit.objects.create(opportunity=opp, name="Unit", amount=100, org_amount=10)
        forms = [
            DeliverUnit.objects.create(slug=f"du-{n}-{i}", name=f"Form {i}", payment_unit=unit)
            for i in range(deliver_units)
        ]
        user = User.objects.create(username=f"capped-{n}")
        access = OpportunityAccess.objects.create(user=user, opportunity=opp, accepted=True)
        claim = OpportunityClaim.objects.create(opportunity_access=access)
        OpportunityClaimLimit.objects.create(
            opportunity_claim=claim, payment_unit=unit, max_visits=cap
        )
        start = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
        with override_settings(CCC_REPRODUCE_DUPLICATE_FLAG_BUG=True):
            for e in range(works):
                received = start + datetime.timedelta(minutes=e)
                for form in forms:
                    process_deliver_unit(
                        access, form, xform_id=f"x-{n}-{e}-{form.pk}", entity_id=f"e-{e}",
                        visit_date=received, received_at=received, recompute=False,
                    )  # fmt: skip
        update_payment_accrued_for_user(access, incremental=False)
        return access

    return make
