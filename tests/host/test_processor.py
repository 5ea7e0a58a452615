"""The form processor: the host's steps, and the duplicate-flag bug with and without it."""

import datetime
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from commcare_connect.form_receiver.exceptions import ProcessingError
from commcare_connect.form_receiver.processor import process_deliver_unit
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    DeliverUnit,
    Opportunity,
    OpportunityClaimLimit,
    OpportunityVerificationFlags,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.tasks import ExternalRateFetchError

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


# -- the rest of the host's steps ----------------------------------------------------------


def _one(host, access, unit, entity="entity-0", at=T0, **kwargs):
    """Submit the unit's first form once; return the visit as stored."""
    visit = process_deliver_unit(
        access, unit.forms[0], xform_id=str(uuid.uuid4()), entity_id=entity, visit_date=at,
        **kwargs,
    )  # fmt: skip
    return UserVisit.objects.get(pk=visit.pk)


def test_a_future_start_makes_a_trial_visit_without_a_completed_work(host):
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    opp = host.opportunity(start_date=tomorrow)
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 1})
    visit = _one(host, access, unit)
    assert (visit.status, visit.completed_work_id) == (VisitValidationStatus.trial, None)
    assert not CompletedWork.objects.filter(opportunity_access=access).exists()

    later = host.opportunity()
    unit = host.unit(later, start_date=tomorrow)
    access = host.access(later, caps={unit: 1})
    assert _one(host, access, unit).status == VisitValidationStatus.trial
    # Trial visits do not count towards the cap.
    assert _one(host, access, unit, entity="entity-1").status == VisitValidationStatus.trial


def test_with_the_bug_a_trial_visit_was_approved_too(host):
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    opp = host.opportunity(start_date=tomorrow)
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 1})
    with override_settings(CCC_REPRODUCE_DUPLICATE_FLAG_BUG=True):
        visit = _one(host, access, unit)
    assert (visit.status, visit.review_status) == ("approved", "agree")
    assert visit.completed_work_id is None


def test_the_daily_limit_counts_visits_of_the_same_day(host):
    opp = host.opportunity()
    unit = host.unit(opp, max_daily=2)
    access = host.access(opp, caps={unit: 10})
    statuses = [
        _one(host, access, unit, entity=f"e-{i}", at=T0 + datetime.timedelta(hours=i)).status
        for i in range(3)
    ]
    assert statuses == ["approved", "approved", "over_limit"]
    next_day = _one(host, access, unit, entity="e-9", at=T0 + datetime.timedelta(days=1))
    assert next_day.status == VisitValidationStatus.approved


def test_a_payment_unit_without_a_daily_limit_cannot_be_processed(host):
    opp = host.opportunity()
    unit = host.unit(opp, max_daily=None)
    access = host.access(opp, caps={unit: 10})
    with pytest.raises(TypeError, match="max_daily"):
        _one(host, access, unit)


def test_a_claim_past_its_end_date_makes_every_visit_over_limit(host):
    yesterday = datetime.date.today() - datetime.timedelta(days=1)
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 10}, claim_end=yesterday)
    assert _one(host, access, unit).status == VisitValidationStatus.over_limit

    other = host.access(opp, caps={unit: 10})
    OpportunityClaimLimit.objects.filter(opportunity_claim__opportunity_access=other).update(
        end_date=yesterday
    )
    assert _one(host, other, unit).status == VisitValidationStatus.over_limit


def test_a_suspended_worker_s_visits_are_rejected_and_flagged(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp, caps={unit: 10}, suspended=True)
    visit = _one(host, access, unit)
    assert visit.status == VisitValidationStatus.rejected
    assert visit.flagged
    assert visit.flag_reason == {
        "flags": [["user_suspended", "This user is suspended from the opportunity."]]
    }
    work = CompletedWork.objects.get(pk=visit.completed_work_id)
    assert work.status == CompletedWorkStatus.rejected  # by the recompute
    assert work.reason == ""


def test_flags_stop_auto_approval_and_automatic_verification_rejects(host):
    opp = host.opportunity()
    OpportunityVerificationFlags.objects.filter(opportunity=opp).update(gps=True)
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 10})
    no_gps = _one(host, access, unit, entity="e-1")
    assert (no_gps.status, no_gps.flagged) == (VisitValidationStatus.pending, True)
    assert no_gps.flag_reason == {"flags": [["gps", "GPS data is missing"]]}
    with_gps = _one(host, access, unit, entity="e-2", location="1.5 36.8 0 5")
    assert (with_gps.status, with_gps.flagged) == (VisitValidationStatus.approved, False)

    Opportunity.objects.filter(pk=opp.pk).update(automatic_visit_verification=True)
    assert _one(host, access, unit, entity="e-3").status == VisitValidationStatus.rejected


def test_a_form_outside_the_submission_window_is_flagged(host):
    opp = host.opportunity()
    OpportunityVerificationFlags.objects.filter(opportunity=opp).update(
        form_submission_start=datetime.time(10), form_submission_end=datetime.time(16)
    )
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 10})
    early = _one(host, access, unit, entity="e-1", at=T0.replace(hour=9))
    assert early.flag_reason["flags"][0][0] == "form_submission_period"
    assert _one(host, access, unit, entity="e-2", at=T0.replace(hour=12)).flagged is False


def test_missing_verification_flags_are_created(host):
    opp = host.opportunity()
    OpportunityVerificationFlags.objects.filter(opportunity=opp).delete()
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 10})
    assert _one(host, access, unit).status == VisitValidationStatus.approved
    assert OpportunityVerificationFlags.objects.filter(opportunity=opp, duplicate=False).exists()


def test_a_duplicate_is_flagged_when_the_flag_is_on(host, capped):
    unit, access = capped(duplicate_flag=True, cap=10)
    host.submit(access, unit, "entity-0")
    (repeat, _) = host.submit(access, unit, "entity-0", at=T0 + datetime.timedelta(hours=1))
    repeat.refresh_from_db()
    assert repeat.flag_reason == {
        "flags": [["duplicate", "A beneficiary with the same identifier already exists"]]
    }


def test_a_repeat_entity_adds_to_an_approved_work_and_its_pay(host, capped):
    """The processor passes the visit's work to the incremental recompute, so an already
    approved work that receives another full delivery is priced again."""
    unit, access = capped(duplicate_flag=False, cap=10)
    host.submit(access, unit, "entity-0")
    host.submit(access, unit, "entity-0", at=T0 + datetime.timedelta(hours=1))
    work = CompletedWork.objects.get(opportunity_access=access)
    assert (work.saved_approved_count, work.saved_payment_accrued) == (2, 1000)
    access.refresh_from_db()
    assert access.payment_accrued == 1000


def test_last_active_follows_the_latest_visit_date(host, capped):
    unit, access = capped(cap=10)
    later = T0 + datetime.timedelta(days=3)
    host.submit(access, unit, "entity-1", at=later)
    host.submit(access, unit, "entity-0", at=T0)
    access.refresh_from_db()
    assert access.last_active == later


def test_the_claim_limit_row_is_locked_first(host, capped):
    unit, access = capped(cap=10)
    with CaptureQueriesContext(connection) as captured:
        host.submit(access, unit, "entity-0")
    sql = [q["sql"] for q in captured.captured_queries]
    locks = [i for i, q in enumerate(sql) if "FOR UPDATE" in q]
    assert locks and "opportunityclaimlimit" in sql[locks[0]]
    first_visit_read = next(i for i, q in enumerate(sql) if "opportunity_uservisit" in q)
    assert locks[0] < first_visit_read


def test_a_failing_recompute_rolls_the_submission_back(host):
    opp = host.opportunity(currency="XBA")  # no stored rate: the host would fetch one
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 10})
    with pytest.raises(ExternalRateFetchError):
        _one(host, access, unit)
    assert not UserVisit.objects.filter(opportunity_access=access).exists()
    assert not CompletedWork.objects.filter(opportunity_access=access).exists()


def test_a_deliver_unit_without_payment_unit_is_refused(host):
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp, caps={unit: 10})
    loose = DeliverUnit.objects.create(slug="loose", name="Loose form")
    with pytest.raises(ProcessingError):
        process_deliver_unit(access, loose, xform_id="x-1", entity_id="e")
