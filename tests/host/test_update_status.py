"""``update_status``: each of the host's rules, pinned one by one.

Every test runs twice: on this stand-in's ``update_status`` and, when a checkout of the host is
there (see ``conftest.py``), on the host's own. ``test_update_status_vs_host.py`` compares the
two on random data besides.
"""

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
from commcare_connect.opportunity.utils.completed_work import update_status
from commcare_connect.opportunity.visit_import import ImportException

LONG_AGO = datetime.datetime(2025, 1, 10, 8, 0, tzinfo=datetime.UTC)


@pytest.fixture(autouse=True, params=["stand-in", "host"])
def implementation(request, monkeypatch):
    """Which ``update_status`` :func:`run` calls: this project's, or the host's own."""
    function = update_status
    if request.param == "host":
        function = request.getfixturevalue("host_completed_work").update_status
    monkeypatch.setitem(globals(), "_update_status", function)
    return request.param


def run(access, works=None, compute_payment=True):
    """``update_status`` on ``works`` (default: all the access's works), as the host calls it."""
    if works is None:
        works = CompletedWork.objects.filter(opportunity_access=access)
    _update_status(works, access, compute_payment=compute_payment)


_update_status = update_status


def fresh(work) -> CompletedWork:
    return CompletedWork.objects.get(pk=work.pk)


def _rate(code: str, day: datetime.date, rate: str) -> None:
    ExchangeRate.objects.update_or_create(
        currency_code=code, rate_date=day, defaults={"rate": Decimal(rate)}
    )


# -- approval ------------------------------------------------------------------------------


def test_approval_needs_every_required_form_approved_and_agreed(host):
    opp = host.opportunity()
    unit = host.unit(opp, required=2)
    access = host.access(opp)
    first, second = unit.required
    agreed_one = host.work(access, unit, visits=[first])
    second_pending_review = host.work(access, unit, visits=[first])
    host.visit(second_pending_review, second, review_status=VisitReviewStatus.pending)
    second_disagreed = host.work(access, unit, visits=[first])
    host.visit(second_disagreed, second, review_status=VisitReviewStatus.disagree)
    both = host.work(access, unit, visits=[first, second])

    run(access)
    assert fresh(agreed_one).status == CompletedWorkStatus.pending
    assert fresh(second_pending_review).status == CompletedWorkStatus.pending
    assert fresh(second_disagreed).status == CompletedWorkStatus.pending
    assert fresh(both).status == CompletedWorkStatus.approved


def test_approval_needs_one_optional_form_when_the_unit_has_some(host):
    opp = host.opportunity()
    unit = host.unit(opp, required=1, optional=2)
    access = host.access(opp)
    (required,) = unit.required
    first, _second = unit.optional
    no_optional = host.work(access, unit, visits=[required])
    optional_not_agreed = host.work(access, unit, visits=[required])
    host.visit(optional_not_agreed, first, review_status=VisitReviewStatus.pending)
    one_optional = host.work(access, unit, visits=[required, first])

    run(access)
    assert fresh(no_optional).status == CompletedWorkStatus.pending
    assert fresh(optional_not_agreed).status == CompletedWorkStatus.pending
    assert fresh(one_optional).status == CompletedWorkStatus.approved


def test_a_unit_without_required_forms_counts_nothing(host):
    """No required deliver unit: 0 completed, so no pay — yet the work can be approved, since
    "every required form approved" holds vacuously (with an agreed optional form, if any)."""
    opp = host.opportunity()
    optional_only = host.unit(opp, amount=100, required=0, optional=1)
    access = host.access(opp)
    work = host.work(access, optional_only, visits=optional_only.optional)

    run(access)
    work = fresh(work)
    assert work.status == CompletedWorkStatus.approved
    assert (work.saved_completed_count, work.saved_approved_count) == (0, 0)
    assert work.saved_payment_accrued == 0


def test_a_rejected_visit_wins_and_the_reason_joins_every_visit_reason(host):
    opp = host.opportunity()
    unit = host.unit(opp, required=2)
    access = host.access(opp)
    first, second = unit.required
    work = host.work(access, unit, status=CompletedWorkStatus.approved)
    host.visit(work, first, reason="Seen twice")  # approved, with a reason
    host.visit(work, second, status=VisitValidationStatus.rejected, reason=None)
    host.visit(work, second, status=VisitValidationStatus.over_limit, reason="Past the cap")
    quiet = host.work(access, unit, visits=[first])
    host.visit(quiet, second, status=VisitValidationStatus.rejected)

    run(access)
    work = fresh(work)
    assert work.status == CompletedWorkStatus.rejected
    assert work.reason == "Seen twice\nPast the cap"
    assert work.saved_payment_accrued == 0
    assert fresh(quiet).reason == ""  # rejected without any reason: an empty join


def test_over_limit_goes_back_to_approved_and_other_statuses_stay(host):
    opp = host.opportunity()
    unit = host.unit(opp, required=2)
    access = host.access(opp)
    first, _ = unit.required
    over_limit = host.approved_work(access, unit, status=CompletedWorkStatus.over_limit)
    over_limit_half = host.work(access, unit, status=CompletedWorkStatus.over_limit, visits=[first])
    incomplete_half = host.work(access, unit, visits=[first])

    run(access)
    assert fresh(over_limit).status == CompletedWorkStatus.approved
    assert fresh(over_limit_half).status == CompletedWorkStatus.over_limit
    assert fresh(incomplete_half).status == CompletedWorkStatus.pending


def test_works_without_visits_are_left_alone(host):
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp)
    empty = host.work(access, unit, status=CompletedWorkStatus.incomplete, saved_payment_accrued=77)
    run(access)
    empty = fresh(empty)
    assert (empty.status, empty.saved_payment_accrued) == (CompletedWorkStatus.incomplete, 77)


def test_without_auto_approved_payments_only_pay_is_recomputed(host):
    opp = host.opportunity(auto_approve_payments=False)
    unit = host.unit(opp, amount=50)
    access = host.access(opp)
    pending = host.approved_work(access, unit, status=CompletedWorkStatus.pending)
    approved = host.approved_work(access, unit, status=CompletedWorkStatus.approved)
    rejected_visit = host.work(
        access, unit, visits=unit.required, visit_status=VisitValidationStatus.rejected
    )

    run(access)
    assert fresh(pending).status == CompletedWorkStatus.pending
    assert fresh(pending).saved_payment_accrued == 0
    assert fresh(approved).saved_payment_accrued == 50
    assert fresh(rejected_visit).status == CompletedWorkStatus.incomplete
    assert access.payment_accrued == 50


# -- counting and child units --------------------------------------------------------------


def test_counts_take_the_fewest_required_forms_capped_by_the_optional_total(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=10, required=2, optional=2)
    access = host.access(opp)
    a, b = unit.required
    x, y = unit.optional
    work = host.work(access, unit, visits=[a, a, a, b, b, b, x, y])
    host.visit(work, b, review_status=VisitReviewStatus.pending)  # counted, not approved

    run(access)
    work = fresh(work)
    assert (work.saved_completed_count, work.saved_approved_count) == (2, 2)
    assert work.saved_payment_accrued == 20


def test_a_parent_counted_before_its_child_sees_the_childs_own_children(host):
    """The host's walk is ordered: a child work counted while its parent is counted gets the
    model's count (capped by *all* of the child's own child units); counted on its own turn it
    only sees child units that some work of the batch has. So the order of the queryset can
    matter, and does here; and a work whose count falls to 0 keeps its saved pay."""
    opp = host.opportunity()
    parent = host.unit(opp, amount=400)
    child = host.unit(opp, amount=100, parent=parent)
    host.unit(opp, amount=10, parent=child)  # a grandchild unit without any work

    def works(access):
        host.approved_work(access, parent, entity_id="household-1")
        host.approved_work(access, child, entity_id="household-1")
        return CompletedWork.objects.filter(opportunity_access=access)

    parent_first = host.access(opp)
    run(parent_first, works(parent_first).order_by("payment_unit_id"))
    # The child's model count is 0 (its grandchild unit has no work), and caps the parent.
    assert parent_first.payment_accrued == 0
    for work in CompletedWork.objects.filter(opportunity_access=parent_first):
        assert (work.saved_completed_count, work.saved_payment_accrued) == (0, 0)
        assert work.status == CompletedWorkStatus.approved

    child_first = host.access(opp)
    run(child_first, works(child_first).order_by("-payment_unit_id"))
    assert child_first.payment_accrued == 500

    # Parent first again: both counts are 0 now, so the saved pay is not recomputed at all.
    run(child_first, CompletedWork.objects.filter(opportunity_access=child_first).order_by("id"))
    assert child_first.payment_accrued == 500


def test_a_child_unit_outside_the_batch_does_not_cap(host):
    opp = host.opportunity()
    parent = host.unit(opp, amount=400)
    child = host.unit(opp, amount=100, parent=parent)
    access = host.access(opp)
    parent_work = host.approved_work(access, parent, entity_id="household-1")
    child_work = host.approved_work(access, child, entity_id="household-1")
    child_work.uservisit_set.update(status=VisitValidationStatus.rejected)

    run(access, CompletedWork.objects.filter(pk=parent_work.pk))
    assert fresh(parent_work).saved_payment_accrued == 400  # not capped by the child
    run(access)
    assert fresh(parent_work).saved_approved_count == 0  # capped: the child is rejected
    assert fresh(parent_work).saved_completed_count == 1


# -- pay and exchange rates ----------------------------------------------------------------


def test_pay_is_approved_units_times_amount_and_org_amount(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=300, org_amount=45)
    access = host.access(opp)
    work = host.work(access, unit, visits=unit.required * 3)

    run(access)
    work = fresh(work)
    assert (work.saved_payment_accrued, work.saved_org_payment_accrued) == (900, 135)
    assert (work.saved_payment_accrued_usd, work.saved_org_payment_accrued_usd) == (
        Decimal("900.00"),
        Decimal("135.00"),
    )


def test_usd_is_pay_divided_by_the_rate_of_the_status_date_rounded_when_stored(host):
    _rate("XTS", datetime.date(2024, 12, 1), "8")
    _rate("XTS", datetime.date(2025, 1, 11), "16")
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp, amount=1, org_amount=3)
    access = host.access(opp)
    work = host.approved_work(
        access, unit, status=CompletedWorkStatus.approved, status_modified_date=LONG_AGO
    )

    run(access)
    work = fresh(work)
    # 1 / 8 = 0.125 and 3 / 8 = 0.375, rounded half away from zero by numeric(10, 2).
    assert work.saved_payment_accrued_usd == Decimal("0.13")
    assert work.saved_org_payment_accrued_usd == Decimal("0.38")


def test_a_newly_approved_work_is_priced_at_the_rate_of_today(host):
    today = datetime.date.today()
    _rate("XTS", today - datetime.timedelta(days=400), "100")
    _rate("XTS", today, "50")
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    work = host.approved_work(access, unit, status_modified_date=LONG_AGO)

    run(access)
    work = fresh(work)
    assert work.status == CompletedWorkStatus.approved
    assert work.status_modified_date.date() == today  # stamped by the status change
    assert work.saved_payment_accrued_usd == Decimal("2.00")


def test_a_missing_rate_would_be_fetched_from_the_external_service(host):
    _rate("XTS", datetime.date(2025, 2, 1), "10")
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    work = host.approved_work(
        access, unit, status=CompletedWorkStatus.approved, status_modified_date=LONG_AGO
    )
    with pytest.raises(ExternalRateFetchError, match="XTS rate for 2025-01-01"):
        run(access)
    assert fresh(work).saved_payment_accrued == 0  # nothing written


def test_no_currency_fails_only_when_some_work_is_paid(host):
    opp = host.opportunity(currency=None)
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    host.work(access, unit, visits=unit.required, review_status=VisitReviewStatus.pending)
    run(access)  # nothing to pay: no rate needed
    host.approved_work(access, unit)
    with pytest.raises(ImportException):
        run(access)


def test_a_zero_rate_fails(host):
    _rate("XTS", datetime.date(2020, 1, 1), "0")
    opp = host.opportunity(currency="XTS")
    unit = host.unit(opp)
    access = host.access(opp)
    host.approved_work(access, unit)
    with pytest.raises(ImportException):
        run(access)


# -- the access, and what is written -------------------------------------------------------


def test_the_access_object_is_assigned_its_total_and_saved_whole(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    host.approved_work(access, unit)
    untouched = host.approved_work(access, unit)
    untouched_id = untouched.pk
    run(access)
    assert access.payment_accrued == 200

    # Only one work recomputed, but the total covers every work of the access; and the whole
    # object is saved, an unsaved in-memory change included.
    access.suspension_reason = "set in memory only"
    run(access, CompletedWork.objects.exclude(pk=untouched_id).filter(opportunity_access=access))
    stored = OpportunityAccess.objects.get(pk=access.pk)
    assert (access.payment_accrued, stored.payment_accrued) == (200, 200)
    assert stored.suspension_reason == "set in memory only"


def test_the_total_is_taken_and_saved_even_without_works(host):
    opp = host.opportunity()
    access = host.access(opp)
    OpportunityAccess.objects.filter(pk=access.pk).update(payment_accrued=999)
    run(access, CompletedWork.objects.none())
    assert OpportunityAccess.objects.get(pk=access.pk).payment_accrued == 0


def test_compute_payment_false_still_prices_the_works_but_leaves_the_access(host):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100)
    access = host.access(opp)
    work = host.approved_work(access, unit)
    run(access, compute_payment=False)
    assert fresh(work).saved_payment_accrued == 100
    assert access.payment_accrued == 0
    assert OpportunityAccess.objects.get(pk=access.pk).payment_accrued == 0


def _row_versions(ids):
    """Each row's physical position: an UPDATE, even to the same values, moves it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, ctid::text FROM opportunity_completedwork WHERE id = ANY(%s)", [ids]
        )
        return dict(cursor.fetchall())


def test_every_work_with_visits_is_written_back_even_unchanged(host):
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp)
    work = host.approved_work(access, unit)
    empty = host.work(access, unit)
    run(access)
    before = _row_versions([work.pk, empty.pk])
    with CaptureQueriesContext(connection) as captured:
        run(access)
    after = _row_versions([work.pk, empty.pk])
    assert after[work.pk] != before[work.pk]  # rewritten with the same values
    assert after[empty.pk] == before[empty.pk]
    assert sum("UPDATE" in q["sql"] and "completedwork" in q["sql"] for q in captured) == 1
    assert fresh(work).saved_payment_accrued == 100


def test_a_list_is_refused_as_the_host_needs_a_queryset(host, implementation):
    opp = host.opportunity()
    access = host.access(opp)
    # The host fails on ``.values_list``; the stand-in says why.
    expected = (TypeError, "queryset") if implementation == "stand-in" else (AttributeError, None)
    with pytest.raises(expected[0], match=expected[1]):
        _update_status([], access)
