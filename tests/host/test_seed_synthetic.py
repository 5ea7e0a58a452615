"""``seed_synthetic`` on a small N: exact counts, ~5% over the cap, determinism, consistency."""

import io

import pytest
from django.core.management import call_command
from django.db.models import Count, Q

from commcare_connect.demo.situation import over_cap_situation
from commcare_connect.demo.synthetic import SyntheticResult, seed_synthetic
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    DeliverUnit,
    OpportunityAccess,
    OpportunityClaimLimit,
    Payment,
    PaymentUnit,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user

VISITS = 3000
SAVED = [
    "status",
    "status_modified_date",
    "reason",
    "saved_completed_count",
    "saved_approved_count",
    "saved_payment_accrued",
    "saved_payment_accrued_usd",
    "saved_org_payment_accrued",
    "saved_org_payment_accrued_usd",
]


@pytest.fixture
def seeded(db) -> SyntheticResult:
    return seed_synthetic(VISITS, seed=11, chunk_visits=1000)


def _works(result: SyntheticResult):
    return CompletedWork.objects.filter(
        opportunity_access__opportunity_id__in=result.opportunity_ids
    )


def test_exact_visit_count_and_structure(seeded):
    ids = seeded.opportunity_ids
    assert seeded.visits == VISITS
    assert UserVisit.objects.filter(opportunity_id__in=ids).count() == VISITS
    assert len(ids) == 2
    assert _works(seeded).count() == seeded.works
    assert OpportunityAccess.objects.filter(opportunity_id__in=ids).count() == seeded.accesses
    for opp_id in ids:
        units = PaymentUnit.objects.filter(opportunity_id=opp_id)
        assert 1 <= units.count() <= 3
        for unit in units:
            forms = DeliverUnit.objects.filter(payment_unit=unit)
            assert 1 <= forms.count() <= 3
            assert forms.filter(optional=False).exists()
    # Every access has a claim limit for every payment unit of its opportunity.
    limits = OpportunityClaimLimit.objects.filter(
        opportunity_claim__opportunity_access__opportunity_id__in=ids
    ).count()
    expected = sum(
        PaymentUnit.objects.filter(opportunity_id=o).count()
        * OpportunityAccess.objects.filter(opportunity_id=o).count()
        for o in ids
    )
    assert limits == expected


def test_visits_and_works_look_like_the_incident(seeded):
    visits = UserVisit.objects.filter(opportunity_id__in=seeded.opportunity_ids)
    assert not visits.exclude(
        status=VisitValidationStatus.approved, review_status=VisitReviewStatus.agree
    ).exists()
    statuses = set(_works(seeded).values_list("status", flat=True))
    assert CompletedWorkStatus.approved in statuses
    assert statuses <= {CompletedWorkStatus.approved, CompletedWorkStatus.pending}
    assert not _works(seeded).annotate(n=Count("uservisit")).filter(n=0).exists()


def test_about_five_percent_of_accesses_are_over_their_cap(seeded):
    rows = over_cap_situation(seeded.opportunity_ids)
    over = [r for r in rows if r.over_cap]
    over_accesses = {r.access_id for r in over}
    assert len(over_accesses) == seeded.over_cap_accesses
    assert 0.02 <= len(over_accesses) / seeded.accesses <= 0.10
    for row in over:
        assert 1 <= row.over_cap <= max(1, round(row.cap * 0.2))
    assert all(r.works <= r.cap for r in rows if r.access_id not in over_accesses)
    # Past the cap and still approved with pay: what the ledger must correct.
    over_works = _works(seeded).filter(pk__in=[w for r in over for w in r.over_cap_work_ids])
    assert over_works.filter(status=CompletedWorkStatus.approved).exists()
    assert over_works.filter(saved_payment_accrued__gt=0).exists()


def test_part_of_the_work_is_paid_and_invoiced(seeded):
    works = _works(seeded)
    paid = works.filter(payment_date__isnull=False)
    assert 0 < paid.count() < works.count()
    assert not paid.filter(invoice__isnull=True).exists()
    assert not works.filter(payment_date__isnull=True, invoice__isnull=False).exists()
    worker_payments = Payment.objects.filter(
        opportunity_access__opportunity_id__in=seeded.opportunity_ids
    )
    assert worker_payments.exists()
    for payment in worker_payments:
        total = sum(
            paid.filter(opportunity_access_id=payment.opportunity_access_id).values_list(
                "saved_payment_accrued", flat=True
            )
        )
        assert payment.amount == total


def test_full_recompute_changes_nothing(seeded):
    works = _works(seeded).order_by("id")
    before = list(works.values_list("id", *SAVED))
    accesses = OpportunityAccess.objects.filter(
        opportunity_id__in=seeded.opportunity_ids
    ).select_related("opportunity")
    accrued = {a.pk: a.payment_accrued for a in accesses}
    assert any(accrued.values())
    for access in accesses:
        update_payment_accrued_for_user(access, incremental=False)
    after = list(works.values_list("id", *SAVED))
    assert after == before
    assert {
        a.pk: a.payment_accrued
        for a in OpportunityAccess.objects.filter(opportunity_id__in=seeded.opportunity_ids)
    } == accrued


def _fingerprint(result: SyntheticResult) -> list:
    """Everything but ids and the id-derived parts of names, uuids and xform ids."""
    ids = result.opportunity_ids
    units = PaymentUnit.objects.filter(opportunity_id__in=ids).order_by("id")
    forms = DeliverUnit.objects.filter(payment_unit__opportunity_id__in=ids).order_by("id")
    accesses = OpportunityAccess.objects.filter(opportunity_id__in=ids).order_by("id")
    works = CompletedWork.objects.filter(opportunity_access__opportunity_id__in=ids).order_by("id")
    visits = UserVisit.objects.filter(opportunity_id__in=ids).order_by("id")
    return [
        list(units.values_list("name", "amount", "org_amount")),
        list(forms.values_list("optional", "name")),
        list(accesses.values_list("payment_accrued", "suspended", "invited_date", "last_active")),
        list(
            works.annotate(visits=Count("uservisit")).values_list(
                *SAVED[:1], *SAVED[3:], "date_created", "payment_date", "visits"
            )
        ),
        list(visits.values_list("visit_date", "date_created", "status", "review_status")),
        list(works.aggregate(paid=Count("id", filter=Q(invoice__isnull=False))).values()),
    ]


def test_same_seed_same_data_other_seed_other_data(db):
    first = seed_synthetic(VISITS, seed=5)
    second = seed_synthetic(VISITS, seed=5)
    other = seed_synthetic(VISITS, seed=6)
    assert set(first.opportunity_ids).isdisjoint(second.opportunity_ids)
    assert _fingerprint(first) == _fingerprint(second)
    assert _fingerprint(first) != _fingerprint(other)


def test_sequences_continue_after_the_seeded_ids(seeded, host):
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp)
    work = host.approved_work(access, unit)
    assert work.pk > max(_works(seeded).values_list("id", flat=True))
    assert opp.pk > max(seeded.opportunity_ids)


def test_command_reports_counts_and_timing(db):
    out = io.StringIO()
    call_command("seed_synthetic", "--visits", "500", "--seed", "3", stdout=out)
    text = out.getvalue()
    assert "500 visits" in text
    assert "Timing:" in text
