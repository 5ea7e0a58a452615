"""The form processor's cap and duplicate checks, with and without the duplicate-flag bug."""

import datetime

import pytest

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    VisitReviewStatus,
    VisitValidationStatus,
)

T0 = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC)


@pytest.fixture
def capped(host):
    """An opportunity with a two-form unit and a worker capped at two works."""

    def make(*, duplicate_flag: bool = False, cap: int = 2):
        opp = host.opportunity(duplicate_flag=duplicate_flag)
        unit = host.unit(opp, amount=500, org_amount=100, required=2)
        access = host.access(opp, caps={unit: cap})
        return unit, access

    return make


def _submit_entities(host, unit, access, count, *, bug=False):
    visits = []
    for i in range(count):
        at = T0 + datetime.timedelta(hours=i)
        visits.append(host.submit(access, unit, f"entity-{i}", bug=bug, at=at))
    access.refresh_from_db()
    return visits


def test_visits_under_the_cap_are_approved_and_paid(host, capped):
    unit, access = capped()
    visits = _submit_entities(host, unit, access, 2)
    for forms in visits:
        for visit in forms:
            assert (visit.status, visit.review_status) == ("approved", "agree")
    assert access.payment_accrued == 1000


def test_the_visit_at_the_cap_is_over_limit(host, capped):
    unit, access = capped()
    *_, over = _submit_entities(host, unit, access, 3)
    for visit in over:
        assert visit.status == VisitValidationStatus.over_limit
        assert visit.review_status == VisitReviewStatus.pending
    work = CompletedWork.objects.get(opportunity_access=access, entity_id="entity-2")
    assert work.status == CompletedWorkStatus.over_limit
    assert work.saved_payment_accrued == 0
    assert access.payment_accrued == 1000


def test_repeat_entity_is_a_duplicate_when_the_flag_is_on(host, capped):
    unit, access = capped(duplicate_flag=True, cap=10)
    host.submit(access, unit, "entity-0")
    repeat = host.submit(access, unit, "entity-0", at=T0 + datetime.timedelta(hours=1))
    assert [v.status for v in repeat] == [VisitValidationStatus.duplicate] * 2
    assert all(v.review_status == VisitReviewStatus.pending for v in repeat)


def test_repeat_entity_is_accepted_when_the_flag_is_off(host, capped):
    unit, access = capped(duplicate_flag=False, cap=10)
    host.submit(access, unit, "entity-0")
    repeat = host.submit(access, unit, "entity-0", at=T0 + datetime.timedelta(hours=1))
    assert [v.status for v in repeat] == [VisitValidationStatus.approved] * 2


def test_without_the_bug_over_limit_survives_the_flag_being_off(host, capped):
    unit, access = capped(duplicate_flag=False)
    *_, over = _submit_entities(host, unit, access, 3, bug=False)
    assert [v.status for v in over] == [VisitValidationStatus.over_limit] * 2
    work = CompletedWork.objects.get(opportunity_access=access, entity_id="entity-2")
    assert work.status == CompletedWorkStatus.over_limit
    assert access.payment_accrued == 1000


def test_with_the_bug_and_the_flag_off_visits_past_the_cap_are_approved(host, capped):
    unit, access = capped(duplicate_flag=False)
    *_, over = _submit_entities(host, unit, access, 3, bug=True)
    for visit in over:
        assert (visit.status, visit.review_status) == ("approved", "agree")
    work = CompletedWork.objects.get(opportunity_access=access, entity_id="entity-2")
    assert work.status == CompletedWorkStatus.approved
    assert (work.saved_payment_accrued, work.saved_org_payment_accrued) == (500, 100)
    assert access.payment_accrued == 1500


def test_with_the_bug_and_the_flag_on_over_limit_survives(host, capped):
    unit, access = capped(duplicate_flag=True)
    *_, over = _submit_entities(host, unit, access, 3, bug=True)
    assert [v.status for v in over] == [VisitValidationStatus.over_limit] * 2
    assert access.payment_accrued == 1000


def test_over_limit_and_trial_visits_do_not_count_towards_the_cap(host, capped):
    unit, access = capped(cap=2)
    _submit_entities(host, unit, access, 3)  # the third is over_limit
    work = CompletedWork.objects.get(opportunity_access=access, entity_id="entity-0")
    host.visit(work, unit.required[0], status=VisitValidationStatus.trial)
    # Still two counted visits per form: the next entity is over the cap, not further.
    late = host.submit(access, unit, "entity-9", at=T0 + datetime.timedelta(days=1))
    assert [v.status for v in late] == [VisitValidationStatus.over_limit] * 2
