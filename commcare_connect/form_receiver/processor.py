"""The host's processing of one submitted deliver-unit form (``process_deliver_unit``).

The steps, their order and their conditions are those of the host's
``form_receiver/processor.py``; only the entry point differs: instead of an ``XForm`` and a
form block, the caller passes the worker's access, the deliver unit and the form's facts as
keywords (the ledger never calls this; tests and seeds do).

1. In one transaction (the host runs under ``ATOMIC_REQUESTS``), lock the claim limit of the
   worker's claim for the deliver unit's payment unit (``select_for_update``); the worker's
   visits of that deliver unit, except over_limit and trial ones, are counted: on the form's
   day, in total, and for the same entity.
2. The opportunity or the payment unit starting after today makes the visit a trial, without a
   completed work. Otherwise the completed work of (access, entity, payment unit) is fetched or
   created; the daily count reaching ``max_daily``, the total reaching the claim limit's
   ``max_visits``, or today being past the claim's (or claim limit's) end date makes the visit
   over_limit and its work over_limit too; else a visit of an entity seen before is a
   duplicate.
3. The cleaning step (the opportunity's verification flags, created when missing): a duplicate
   is flagged when the ``duplicate`` flag is on, else goes back to pending; a missing location
   is flagged when ``gps`` is on; a form started outside the submission window is flagged.
   With ``settings.CCC_REPRODUCE_DUPLICATE_FLAG_BUG`` the historical version of the first rule
   runs instead (2024-07-18 to 2026-04-28): with the flag off *any* status went back to
   pending, over_limit and trial included.
4. A suspended worker's visit is flagged and rejected (its work's status set to rejected in
   memory, saved only if the work is saved anyway). Flags mark the visit flagged; with
   ``automatic_visit_verification`` a flagged pending visit is rejected; with
   ``auto_approve_visits`` an unflagged pending visit is approved with review ``agree``.
5. The visit is saved; ``last_active`` moves to the visit date if later (saved with the access
   by the recompute below); an incomplete work becomes pending and the work is saved when it
   changed.
6. ``update_payment_accrued_for_user(access, incremental=True, completed_work_id=work id)``.

Not mirrored (the stand-in has no such models): location-distance and catchment-area flags,
deliver-unit flag rules, form JSON rules, assigned tasks, work areas, attachment downloads.
"""

from __future__ import annotations

import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils.timezone import now

from commcare_connect.form_receiver.exceptions import ProcessingError
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    DeliverUnit,
    OpportunityAccess,
    OpportunityClaim,
    OpportunityClaimLimit,
    OpportunityVerificationFlags,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user


def clean_form_submission(access: OpportunityAccess, user_visit: UserVisit) -> list[list[str]]:
    """The verification-flag checks the stand-in can make; returns ``[code, message]`` pairs.

    May change ``user_visit.status`` (a duplicate goes back to pending when duplicates are
    allowed).
    """
    flags = []
    opportunity_flags, _ = OpportunityVerificationFlags.objects.get_or_create(
        opportunity=user_visit.opportunity
    )
    if getattr(settings, "CCC_REPRODUCE_DUPLICATE_FLAG_BUG", False):
        # The historical rule: with the flag off, every status was reset, over_limit included.
        if opportunity_flags.duplicate:
            if user_visit.status == VisitValidationStatus.duplicate:
                flags.append(["duplicate", "A beneficiary with the same identifier already exists"])
        else:
            user_visit.status = VisitValidationStatus.pending
    elif user_visit.status == VisitValidationStatus.duplicate:
        if opportunity_flags.duplicate:
            flags.append(["duplicate", "A beneficiary with the same identifier already exists"])
        else:
            user_visit.status = VisitValidationStatus.pending
    if opportunity_flags.gps and user_visit.location is None:
        flags.append(["gps", "GPS data is missing"])
    started = user_visit.visit_date.time()
    window_start = opportunity_flags.form_submission_start
    window_end = opportunity_flags.form_submission_end
    if window_start and window_start > started:
        flags.append(["form_submission_period", "Form was submitted before the start time"])
    if window_end and window_end < started:
        flags.append(["form_submission_period", "Form was submitted after the end time"])
    return flags


def process_deliver_unit(
    access: OpportunityAccess,
    deliver_unit: DeliverUnit,
    *,
    xform_id: str,
    entity_id: str | None,
    entity_name: str | None = None,
    visit_date: datetime.datetime | None = None,
    received_at: datetime.datetime | None = None,
    location: str | None = None,
    form_json: dict | None = None,
    app_build_id: str | None = None,
    app_build_version: int | None = None,
    recompute: bool = True,
) -> UserVisit:
    """Record one submitted deliver-unit form as the host does; return the saved visit.

    ``visit_date`` is the form's ``timeStart`` (default: now). The access, its opportunity and
    the deliver unit are read again from the database, as the host reads them per request.

    Two conveniences for seeds, outside the host's behaviour: ``received_at`` moves the new
    visit's ``date_created`` (and that of a completed work this call created) to when the form
    is supposed to have arrived, after the rows are written; ``recompute=False`` skips the
    final incremental recompute (and with it the save of ``last_active``, which the host's
    recompute saves with the access), for callers that run a full recompute afterwards.
    """
    with transaction.atomic():
        return _process(
            access.pk,
            deliver_unit.pk,
            xform_id=xform_id,
            entity_id=entity_id,
            entity_name=entity_name,
            visit_date=visit_date or now(),
            received_at=received_at,
            location=location,
            form_json={} if form_json is None else form_json,
            app_build_id=app_build_id,
            app_build_version=app_build_version,
            recompute=recompute,
        )


def _process(
    access_id: int,
    deliver_unit_id: int,
    *,
    xform_id,
    entity_id,
    entity_name,
    visit_date,
    received_at,
    location,
    form_json,
    app_build_id,
    app_build_version,
    recompute,
) -> UserVisit:
    deliver_unit = DeliverUnit.objects.get(pk=deliver_unit_id)
    access = OpportunityAccess.objects.get(pk=access_id)
    opportunity = access.opportunity
    payment_unit = deliver_unit.payment_unit
    if not payment_unit:
        raise ProcessingError(
            f"Payment unit is not configured for the deliver unit: "
            f"{deliver_unit.name} in opportunity: {opportunity.name}"
        )
    claim = OpportunityClaim.objects.get(opportunity_access=access)

    created_work = False
    with transaction.atomic():
        # Serialises concurrent submissions of one worker for one payment unit, so two of them
        # cannot both pass the limit checks.
        claim_limit = OpportunityClaimLimit.objects.select_for_update().get(
            opportunity_claim=claim, payment_unit=payment_unit
        )
        counts = (
            UserVisit.objects.filter(opportunity_access=access, deliver_unit=deliver_unit)
            .exclude(status__in=[VisitValidationStatus.over_limit, VisitValidationStatus.trial])
            .aggregate(
                daily=Count("pk", filter=Q(visit_date__date=visit_date)),
                total=Count("*"),
                entity=Count("pk", filter=Q(entity_id=entity_id, deliver_unit=deliver_unit)),
            )
        )
        user_visit = UserVisit(
            opportunity=opportunity,
            user_id=access.user_id,
            opportunity_access=access,
            deliver_unit=deliver_unit,
            entity_id=entity_id,
            entity_name=entity_name,
            visit_date=visit_date,
            xform_id=xform_id,
            app_build_id=app_build_id,
            app_build_version=app_build_version,
            form_json=form_json,
            location=location,
        )
        work_needs_save = False
        today = datetime.date.today()
        if opportunity.start_date > today or (
            payment_unit.start_date and payment_unit.start_date > today
        ):
            completed_work = None
            user_visit.status = VisitValidationStatus.trial
        else:
            completed_work, created_work = CompletedWork.objects.get_or_create(
                opportunity_access=access,
                entity_id=entity_id,
                payment_unit=payment_unit,
                defaults={"entity_name": entity_name},
            )
            user_visit.completed_work = completed_work
            if payment_unit.max_daily is None:
                # The host compares with ``>=`` and fails the same way.
                raise TypeError(
                    f"payment unit {payment_unit.pk} has no max_daily; the host's daily-limit "
                    "check cannot compare with None"
                )
            if (
                counts["daily"] >= payment_unit.max_daily
                or counts["total"] >= claim_limit.max_visits
                or today > claim.end_date
                or (claim_limit.end_date and today > claim_limit.end_date)
            ):
                user_visit.status = VisitValidationStatus.over_limit
                if completed_work.status != CompletedWorkStatus.over_limit:
                    completed_work.status = CompletedWorkStatus.over_limit
                    work_needs_save = True
            elif counts["entity"] > 0:
                user_visit.status = VisitValidationStatus.duplicate

        flags = clean_form_submission(access, user_visit)
        if access.suspended:
            flags.append(["user_suspended", "This user is suspended from the opportunity."])
            user_visit.status = VisitValidationStatus.rejected
            if completed_work is not None:
                completed_work.status = CompletedWorkStatus.rejected
        if flags:
            user_visit.flagged = True
            user_visit.flag_reason = {"flags": flags}

        if (
            opportunity.automatic_visit_verification
            and user_visit.status == VisitValidationStatus.pending
            and user_visit.flagged
        ):
            user_visit.status = VisitValidationStatus.rejected
        if (
            opportunity.auto_approve_visits
            and user_visit.status == VisitValidationStatus.pending
            and not user_visit.flagged
        ):
            user_visit.status = VisitValidationStatus.approved
            user_visit.review_status = VisitReviewStatus.agree

        user_visit.save()

        if not access.last_active or access.last_active < user_visit.visit_date:
            access.last_active = user_visit.visit_date

        if completed_work is not None:
            if completed_work.status == CompletedWorkStatus.incomplete:
                completed_work.status = CompletedWorkStatus.pending
                work_needs_save = True
            if work_needs_save:
                completed_work.save()

    if received_at is not None:
        UserVisit.objects.filter(pk=user_visit.pk).update(date_created=received_at)
        if created_work:
            CompletedWork.objects.filter(pk=completed_work.pk).update(date_created=received_at)

    if recompute:
        update_payment_accrued_for_user(
            access,
            incremental=True,
            completed_work_id=completed_work.id if completed_work is not None else None,
        )
    return user_visit
