"""The host's deliver-unit processing, reduced to what decides a visit's status.

``process_deliver_unit`` records one submitted form as a ``UserVisit``, attaches it to the
completed work of its (access, entity, payment unit), applies the per-worker cap of the claim
limit, and auto-approves. The historical duplicate-flag bug (a cleaning step that reset any
status to pending when the opportunity's ``duplicate`` flag was off, wiping over_limit) is
reproduced only when ``settings.CCC_REPRODUCE_DUPLICATE_FLAG_BUG`` is true, so incident data is
produced by the code path that produced it in production.
"""

from __future__ import annotations

import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    DeliverUnit,
    OpportunityAccess,
    OpportunityClaimLimit,
    OpportunityVerificationFlags,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user


def _cap_status(
    access: OpportunityAccess, deliver_unit: DeliverUnit, entity_id: str, day: datetime.date
) -> str:
    """The status the cap checks give a new visit (pending when nothing objects)."""
    payment_unit = deliver_unit.payment_unit
    counted = UserVisit.objects.filter(
        opportunity_access=access, deliver_unit=deliver_unit
    ).exclude(status__in=[VisitValidationStatus.over_limit, VisitValidationStatus.trial])
    limit = (
        OpportunityClaimLimit.objects.filter(
            opportunity_claim__opportunity_access=access, payment_unit=payment_unit
        )
        .only("max_visits", "end_date")
        .first()
    )
    if limit is not None and counted.count() >= limit.max_visits:
        return VisitValidationStatus.over_limit
    if payment_unit.max_daily is not None:
        if counted.filter(visit_date__date=day).count() >= payment_unit.max_daily:
            return VisitValidationStatus.over_limit
    if limit is not None and limit.end_date and day > limit.end_date:
        return VisitValidationStatus.over_limit
    if counted.filter(entity_id=entity_id).exists():
        return VisitValidationStatus.duplicate
    return VisitValidationStatus.pending


@transaction.atomic
def process_deliver_unit(
    access: OpportunityAccess,
    deliver_unit: DeliverUnit,
    *,
    xform_id: str,
    entity_id: str,
    entity_name: str = "",
    visit_date: datetime.datetime | None = None,
    received_at: datetime.datetime | None = None,
    recompute: bool = True,
) -> UserVisit:
    """Record one submitted deliver-unit form and return its visit."""
    opportunity = access.opportunity
    visit_date = visit_date or timezone.now()
    received_at = received_at or timezone.now()
    payment_unit = deliver_unit.payment_unit

    status = _cap_status(access, deliver_unit, entity_id, visit_date.date())
    work, _ = CompletedWork.objects.get_or_create(
        opportunity_access=access,
        entity_id=entity_id,
        payment_unit=payment_unit,
        defaults={"entity_name": entity_name, "date_created": received_at},
    )
    if status == VisitValidationStatus.over_limit and work.status != CompletedWorkStatus.over_limit:
        work.status = CompletedWorkStatus.over_limit
        work.save(update_fields=["status", "status_modified_date"])

    flags = OpportunityVerificationFlags.objects.filter(opportunity=opportunity).first()
    duplicates_allowed = flags is None or not flags.duplicate
    if duplicates_allowed:
        if getattr(settings, "CCC_REPRODUCE_DUPLICATE_FLAG_BUG", False):
            # The bug: any status, over_limit included, went back to pending.
            status = VisitValidationStatus.pending
        elif status == VisitValidationStatus.duplicate:
            status = VisitValidationStatus.pending

    review_status = VisitReviewStatus.pending
    if status == VisitValidationStatus.pending and opportunity.auto_approve_visits:
        status = VisitValidationStatus.approved
        review_status = VisitReviewStatus.agree

    visit = UserVisit.objects.create(
        opportunity=opportunity,
        user_id=access.user_id,
        opportunity_access=access,
        deliver_unit=deliver_unit,
        entity_id=entity_id,
        entity_name=entity_name,
        xform_id=xform_id,
        visit_date=visit_date,
        status=status,
        review_status=review_status,
        completed_work=work,
        status_modified_date=received_at,
    )
    UserVisit.objects.filter(pk=visit.pk).update(date_created=received_at)
    if recompute:
        update_payment_accrued_for_user(access, incremental=True)
    return visit
