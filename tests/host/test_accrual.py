"""The host's accrual rules (``update_status`` via ``update_payment_accrued_for_user``)."""

import datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    ExchangeRate,
    OpportunityAccess,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.tasks import ExternalRateFetchError
from commcare_connect.opportunity.visit_import import (
    update_payment_accrued,
    update_payment_accrued_for_user,
)


def recompute(access, incremental=False) -> OpportunityAccess:
    update_payment_accrued_for_user(access, incremental=incremental)
    access.refresh_from_db()
    return access


def test_one_form_per_unit_accrues_worker_and_org_pay(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=300, org_amount=50)
    access = host.access(opp)
    work = host.approved_work(access, unit)

    assert recompute(access).payment_accrued == 300
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.approved
    assert (work.saved_completed_count, work.saved_approved_count) == (1, 1)
    assert (work.saved_payment_accrued, work.saved_org_payment_accrued) == (300, 50)
    assert work.saved_payment_accrued_usd == Decimal("300.00")
    assert work.saved_org_payment_accrued_usd == Decimal("50.00")


def test_several_forms_per_unit_need_every_required_form(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=500, required=2)
    access = host.access(opp)
    registration, service = unit.required
    work = host.work(access, unit, visits=[registration])

    assert recompute(access).payment_accrued == 0
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.pending  # incomplete -> pending
    assert work.saved_completed_count == 0

    host.visit(work, service)
    assert recompute(access).payment_accrued == 500
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.approved
    assert (work.saved_completed_count, work.saved_approved_count) == (1, 1)


def test_visit_approved_without_agree_does_not_approve_the_work(host):
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp)
    work = host.work(access, unit, visits=unit.required, review_status=VisitReviewStatus.pending)

    assert recompute(access).payment_accrued == 0
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.pending
    assert (work.saved_completed_count, work.saved_approved_count) == (1, 0)


def test_optional_forms_cap_the_count(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, required=1, optional=2)
    access = host.access(opp)
    (required,) = unit.required
    first, second = unit.optional

    no_optional = host.work(access, unit, visits=[required])
    one_optional = host.work(access, unit, visits=[required, first])
    both_optional = host.work(access, unit, visits=[required, first, second])
    two_of_each = host.work(access, unit, visits=[required, required, first, second])

    assert recompute(access).payment_accrued == 0 + 100 + 100 + 200
    for work, units, status in [
        # Without an approved optional form the work is not approved (it was incomplete).
        (no_optional, 0, CompletedWorkStatus.pending),
        (one_optional, 1, CompletedWorkStatus.approved),
        (both_optional, 1, CompletedWorkStatus.approved),
        (two_of_each, 2, CompletedWorkStatus.approved),
    ]:
        work.refresh_from_db()
        assert work.status == status
        assert work.saved_approved_count == units
        assert work.saved_payment_accrued == 100 * units


def test_child_unit_work_caps_its_parent(host):
    opp = host.opportunity()
    parent = host.unit(opp, amount=400)
    child = host.unit(opp, amount=100, parent=parent)
    access = host.access(opp)
    other = host.approved_work(access, child, entity_id="household-2")
    parent_work = host.approved_work(access, parent, entity_id="household-1")

    assert recompute(access).payment_accrued == 100  # household-2's child work only
    parent_work.refresh_from_db()
    assert parent_work.status == CompletedWorkStatus.approved
    assert parent_work.saved_payment_accrued == 0  # no child work for household-1 yet
    assert (parent_work.saved_completed_count, parent_work.saved_approved_count) == (0, 0)
    other.refresh_from_db()
    assert other.saved_payment_accrued == 100

    host.approved_work(access, child, entity_id="household-1")
    assert recompute(access).payment_accrued == 400 + 100 + 100
    parent_work.refresh_from_db()
    assert parent_work.saved_payment_accrued == 400


def test_child_unit_caps_only_when_a_work_of_it_is_recomputed_too(host):
    """The host caps a parent by child units that some recomputed work has: alone, a parent
    work is paid although its entity has no child work."""
    opp = host.opportunity()
    parent = host.unit(opp, amount=400)
    host.unit(opp, amount=100, parent=parent)
    access = host.access(opp)
    parent_work = host.approved_work(access, parent, entity_id="household-1")

    assert recompute(access).payment_accrued == 400
    parent_work.refresh_from_db()
    assert (parent_work.saved_completed_count, parent_work.saved_payment_accrued) == (1, 400)


def test_rejected_visit_rejects_the_work_with_joined_reasons(host):
    opp = host.opportunity()
    unit = host.unit(opp, required=3)
    access = host.access(opp)
    work = host.work(access, unit)
    host.visit(work, unit.required[0], reason="Checked by phone")  # approved, with a reason
    host.visit(work, unit.required[1], status=VisitValidationStatus.rejected, reason="GPS off")
    host.visit(work, unit.required[2], status=VisitValidationStatus.rejected, reason="No photo")
    host.visit(work, unit.required[2], status=VisitValidationStatus.rejected, reason="")

    assert recompute(access).payment_accrued == 0
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.rejected
    # Every visit's reason, the approved one's too, in the order the visits were made.
    assert work.reason == "Checked by phone\nGPS off\nNo photo"
    assert work.saved_payment_accrued == 0


def test_over_limit_work_with_approved_visits_goes_back_to_approved(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=250)
    access = host.access(opp)
    work = host.approved_work(access, unit, status=CompletedWorkStatus.over_limit)

    assert recompute(access).payment_accrued == 250
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.approved


def test_over_limit_work_with_over_limit_visits_stays_unpaid(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=250)
    access = host.access(opp)
    work = host.work(
        access,
        unit,
        status=CompletedWorkStatus.over_limit,
        visits=unit.required,
        visit_status=VisitValidationStatus.over_limit,
    )
    assert recompute(access).payment_accrued == 0
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.over_limit
    assert (work.saved_completed_count, work.saved_approved_count) == (1, 0)


def test_incremental_mode_skips_an_accrued_work_set_to_over_limit(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=200)
    access = host.access(opp)
    kept = host.approved_work(access, unit)
    flipped = host.approved_work(access, unit)
    assert recompute(access).payment_accrued == 400

    # A correction flips the work and its visits, as the remediation must.
    CompletedWork.objects.filter(pk=flipped.pk).update(status=CompletedWorkStatus.over_limit)
    flipped.uservisit_set.update(status=VisitValidationStatus.over_limit)

    assert recompute(access, incremental=True).payment_accrued == 400  # still counted
    flipped.refresh_from_db()
    assert flipped.saved_payment_accrued == 200

    assert recompute(access, incremental=False).payment_accrued == 200
    flipped.refresh_from_db()
    kept.refresh_from_db()
    assert flipped.status == CompletedWorkStatus.over_limit
    assert flipped.saved_payment_accrued == 0
    assert kept.saved_payment_accrued == 200


def test_incremental_mode_accrues_new_work(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=200)
    access = host.access(opp)
    host.approved_work(access, unit)
    assert recompute(access, incremental=True).payment_accrued == 200


def test_update_payment_accrued_skips_suspended_accesses(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    active = host.access(opp)
    suspended = host.access(opp, suspended=True)
    host.approved_work(active, unit)
    host.approved_work(suspended, unit)

    update_payment_accrued(opp, [active.user, suspended.user])
    active.refresh_from_db()
    suspended.refresh_from_db()
    assert active.payment_accrued == 100
    assert suspended.payment_accrued == 0
    assert not CompletedWork.objects.filter(
        opportunity_access=suspended, status=CompletedWorkStatus.approved
    ).exists()


def test_usd_conversion_uses_the_rate_of_the_status_date(host):
    for day, rate in [(datetime.date(2026, 1, 1), "100"), (datetime.date(2026, 2, 1), "125")]:
        ExchangeRate.objects.update_or_create(
            currency_code="XTS", rate_date=day, defaults={"rate": Decimal(rate)}
        )
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp, amount=1000, org_amount=250)
    access = host.access(opp)

    def approved_on(day: datetime.date) -> CompletedWork:
        # Already approved, so the recompute keeps its status_modified_date.
        when = datetime.datetime.combine(day, datetime.time(15), tzinfo=datetime.UTC)
        return host.approved_work(
            access, unit, status=CompletedWorkStatus.approved, status_modified_date=when
        )

    january = approved_on(datetime.date(2026, 1, 20))
    february = approved_on(datetime.date(2026, 2, 1))
    assert recompute(access).payment_accrued == 2000

    for work, usd, org_usd in [(january, "10.00", "2.50"), (february, "8.00", "2.00")]:
        work.refresh_from_db()
        assert work.saved_payment_accrued == 1000
        assert work.saved_payment_accrued_usd == Decimal(usd)
        assert work.saved_org_payment_accrued_usd == Decimal(org_usd)

    # Before any stored rate the host fetches one from the external service: never here.
    approved_on(datetime.date(2025, 12, 31))
    with pytest.raises(ExternalRateFetchError, match="2025-12-01"):
        recompute(access)


def test_usd_rounds_half_up_to_cents(host):
    ExchangeRate.objects.update_or_create(
        currency_code="XTS", rate_date=datetime.date(2020, 1, 1), defaults={"rate": Decimal("8")}
    )
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp, amount=1, org_amount=0)  # 1 / 8 = 0.125 -> 0.13
    access = host.access(opp)
    work = host.approved_work(access, unit)
    recompute(access)
    work.refresh_from_db()
    assert work.saved_payment_accrued_usd == Decimal("0.13")


def _recompute_queries(host, works: int) -> int:
    opp = host.opportunity()
    unit = host.unit(opp, required=2, optional=1)
    access = host.access(opp)
    for _ in range(works):
        host.approved_work(access, unit)
    with CaptureQueriesContext(connection) as captured:
        update_payment_accrued_for_user(access, incremental=False)
    access.refresh_from_db()
    assert access.payment_accrued == 100 * works
    return len(captured.captured_queries)


def test_queries_per_access_do_not_grow_with_its_works(host, django_assert_max_num_queries):
    one = _recompute_queries(host, 1)
    twenty = _recompute_queries(host, 20)
    assert one == twenty
    access = (
        OpportunityAccess.objects.select_related("opportunity__currency").order_by("-id").first()
    )
    with django_assert_max_num_queries(one):
        # Nothing changed, but the host writes every recomputed work back all the same.
        update_payment_accrued_for_user(access, incremental=False)


def test_child_unit_with_optional_forms_counted_once_alongside_its_parent(host):
    opp = host.opportunity()
    parent = host.unit(opp, amount=400)
    child = host.unit(opp, amount=100, required=1, optional=1, parent=parent)
    access = host.access(opp)
    host.approved_work(access, parent, entity_id="household-1")
    (required,) = child.required
    (optional,) = child.optional
    # Two required visits but one optional: the optional total caps the count at one.
    child_work = host.work(
        access, child, entity_id="household-1", visits=[required, required, optional]
    )

    assert recompute(access).payment_accrued == 400 + 100
    child_work.refresh_from_db()
    assert (child_work.saved_completed_count, child_work.saved_payment_accrued) == (1, 100)


def test_incremental_parent_work_sees_an_already_accrued_child_work(host):
    opp = host.opportunity()
    parent = host.unit(opp, amount=400)
    child = host.unit(opp, amount=100, required=1, optional=1, parent=parent)
    access = host.access(opp)
    host.approved_work(access, child, entity_id="household-1")
    assert recompute(access).payment_accrued == 100

    parent_work = host.approved_work(access, parent, entity_id="household-1")
    assert recompute(access, incremental=True).payment_accrued == 500
    parent_work.refresh_from_db()
    assert parent_work.saved_payment_accrued == 400
