"""``status_modified_date`` is stamped by ``__setattr__`` on a new status, and only then."""

import datetime

from django.utils import timezone

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    UserVisit,
    VisitValidationStatus,
)

LONG_AGO = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def _work(host):
    opp = host.opportunity()
    unit = host.unit(opp)
    access = host.access(opp)
    work = host.approved_work(
        access, unit, status=CompletedWorkStatus.pending, status_modified_date=LONG_AGO
    )
    return CompletedWork.objects.get(pk=work.pk)


def test_loading_from_the_database_does_not_stamp(host):
    work = _work(host)
    assert work.status_modified_date == LONG_AGO


def test_same_status_does_not_stamp(host):
    work = _work(host)
    work.status = CompletedWorkStatus.pending
    assert work.status_modified_date == LONG_AGO


def test_new_status_stamps_now(host):
    work = _work(host)
    before = timezone.now()
    work.status = CompletedWorkStatus.over_limit
    assert before <= work.status_modified_date <= timezone.now()
    work.save()
    work.refresh_from_db()
    assert work.status_modified_date >= before


def test_visit_stamps_too(host):
    work = _work(host)
    visit = UserVisit.objects.filter(completed_work=work).first()
    visit.status_modified_date = LONG_AGO
    visit.status = VisitValidationStatus.over_limit
    assert visit.status_modified_date > LONG_AGO


def test_queryset_update_does_not_stamp(host):
    work = _work(host)
    CompletedWork.objects.filter(pk=work.pk).update(status=CompletedWorkStatus.over_limit)
    work.refresh_from_db()
    assert work.status == CompletedWorkStatus.over_limit
    assert work.status_modified_date == LONG_AGO


def test_a_new_instance_passes_through_the_initial_status(host):
    """As in the host, ``__init__`` starts from the initial status, so a new instance given
    another status is stamped now — unless a stamp is given too (it is assigned after)."""
    before = timezone.now()
    work = CompletedWork(status=CompletedWorkStatus.approved)
    assert work.status_modified_date >= before
    given = CompletedWork(status=CompletedWorkStatus.approved, status_modified_date=LONG_AGO)
    assert given.status_modified_date == LONG_AGO
    assert UserVisit().status == VisitValidationStatus.pending


def test_a_row_loaded_without_its_status_reads_the_initial_status(host):
    work = _work(host)
    assert CompletedWork.objects.only("id").get(pk=work.pk).status == CompletedWorkStatus.incomplete
    visit = UserVisit.objects.filter(completed_work=work).only("id").first()
    assert visit.status == VisitValidationStatus.pending


def test_refreshing_a_changed_status_stamps_the_instance(host):
    work = _work(host)
    CompletedWork.objects.filter(pk=work.pk).update(status=CompletedWorkStatus.rejected)
    before = timezone.now()
    work.refresh_from_db(fields=["status"])
    assert work.status == CompletedWorkStatus.rejected
    assert work.status_modified_date >= before
