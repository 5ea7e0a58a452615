"""``seed_incident`` builds what it claims, through the processor, and can run again."""

import io

import pytest
from django.core.management import call_command

from commcare_connect.demo.incident import IncidentData, build_incident, over_cap_situation
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    Opportunity,
    OpportunityAccess,
    Payment,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user


@pytest.fixture
def incident(db) -> IncidentData:
    return build_incident()


def _rows(data: IncidentData, opportunity: Opportunity):
    return [r for r in over_cap_situation([opportunity.pk]) if r.over_cap]


def test_opportunity_a_has_two_over_cap_works_across_two_accesses(incident):
    a = incident.opportunity_a
    assert (a.currency_id, a.currency_code, a.is_test, a.active) == ("USD", "USD", False, True)
    assert a.opportunityverificationflags.duplicate is False
    rows = _rows(incident, a)
    assert sorted(r.access_id for r in rows) == sorted(
        [incident.accesses["w1"].pk, incident.accesses["w2"].pk]
    )
    over = [wid for r in rows for wid in r.over_cap_work_ids]
    assert sorted(over) == sorted([incident.over_cap_work_ids[k] for k in ("w1", "w2")])
    for work in CompletedWork.objects.filter(pk__in=over):
        assert work.status == CompletedWorkStatus.approved
        assert work.saved_payment_accrued == 500
        assert work.saved_org_payment_accrued == 100
        visits = UserVisit.objects.filter(completed_work=work).exclude(
            status=VisitValidationStatus.trial
        )
        assert visits.count() == 2
        assert {(v.status, v.review_status) for v in visits} == {
            (VisitValidationStatus.approved, VisitReviewStatus.agree)
        }


def test_each_work_has_a_registration_and_a_service_visit(incident):
    for work in CompletedWork.objects.filter(
        opportunity_access__opportunity_id__in=incident.opportunity_ids
    ):
        forms = UserVisit.objects.filter(completed_work=work).exclude(
            status=VisitValidationStatus.trial
        )
        assert forms.values("deliver_unit").distinct().count() == 2


def test_worker_at_the_cap_is_not_over(incident):
    row = next(
        r for r in over_cap_situation(incident.opportunity_ids)
        if r.access_id == incident.at_cap_access_id
    )  # fmt: skip
    assert (row.cap, row.works, row.over_cap) == (incident.cap_a, incident.cap_a, 0)
    assert row.payment_accrued == 3 * 500


def test_shared_date_created_is_tie_broken_by_id(incident):
    w2 = incident.accesses["w2"]
    dates = set(CompletedWork.objects.filter(opportunity_access=w2).values_list("date_created"))
    assert len(dates) == 1
    last = CompletedWork.objects.filter(opportunity_access=w2).order_by("-id").first()
    assert incident.over_cap_work_ids["w2"] == last.pk
    # w1's cap-th and over-cap works share a date too.
    w1_works = CompletedWork.objects.filter(opportunity_access=incident.accesses["w1"])
    assert w1_works.values("date_created").distinct().count() == incident.cap_a


def test_trial_visit_sits_on_an_over_cap_work(incident):
    trial = UserVisit.objects.get(pk=incident.trial_visit_id)
    assert trial.status == VisitValidationStatus.trial
    assert trial.completed_work_id == incident.over_cap_work_ids["w1"]


def test_opportunity_b_suspended_and_paid_workers(incident):
    b = incident.opportunity_b
    assert (b.currency_id, b.currency_code) == ("KES", "KES")
    rows = {r.access_id: r for r in _rows(incident, b)}
    suspended = OpportunityAccess.objects.get(pk=incident.suspended_access_id)
    assert suspended.suspended
    assert rows[suspended.pk].over_cap == 1
    assert suspended.payment_accrued == 3 * 6500

    paid = CompletedWork.objects.get(pk=incident.paid_over_cap_work_id)
    assert rows[incident.paid_access_id].over_cap_work_ids == [paid.pk]
    assert paid.status == CompletedWorkStatus.approved
    assert paid.payment_date is not None
    assert paid.invoice_id == incident.invoice_id
    assert paid.saved_payment_accrued_usd > 0  # converted at the seeded KES rate
    payment = Payment.objects.get(pk=incident.worker_payment_id)
    assert payment.opportunity_access_id == incident.paid_access_id
    assert payment.amount == 3 * 6500


def test_accruals_are_consistent_with_a_full_recompute(incident):
    fields = ["id", "status", "status_modified_date", "saved_payment_accrued"]
    works = CompletedWork.objects.filter(
        opportunity_access__opportunity_id__in=incident.opportunity_ids
    ).order_by("id")
    before = list(works.values_list(*fields))
    accrued = {a.pk: a.payment_accrued for a in incident.accesses.values()}
    for access in incident.accesses.values():
        update_payment_accrued_for_user(access, incremental=False)
        access.refresh_from_db()
        assert access.payment_accrued == accrued[access.pk]
    assert list(works.values_list(*fields)) == before


def test_runs_again_with_new_rows(incident):
    again = build_incident()
    assert set(again.opportunity_ids).isdisjoint(incident.opportunity_ids)
    assert again.suffix != incident.suffix
    assert len(_rows(again, again.opportunity_a)) == 2


def test_command_prints_the_summary_and_uuids(db):
    out = io.StringIO()
    call_command("seed_incident", stdout=out)
    text = out.getvalue()
    opps = Opportunity.objects.order_by("-id")[:2]
    for opp in opps:
        assert str(opp.opportunity_id) in text
    assert "suspended=yes" in text
    assert text.count("over_cap=1") == 4


def test_demo_over_cap_step_reports_per_opportunity(incident):
    from commcare_connect.demo.story import show_over_cap

    out = io.StringIO()
    totals = show_over_cap(incident, out)
    assert "2 works over the cap across 2 accesses" in out.getvalue()
    assert totals[incident.opportunity_a.pk] == {
        "works": 2,
        "accesses": 2,
        "accrued": 1000,
        "org_accrued": 200,
    }
    assert totals[incident.opportunity_b.pk]["accrued"] == 2 * 6500
