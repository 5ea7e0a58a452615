"""The original one-off remediation script, re-implemented from its description in host.md.

This is the baseline the ledger replaces, written the way the reviewed script was: the ORM, a
loop over claim limits with one query each (the "after review" version, which counts completed
works), row locks in batches of 500 with ``select_for_update`` and ``bulk_update`` in one
transaction, and the host's recompute called once per access afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    OpportunityAccess,
    OpportunityClaimLimit,
    UserVisit,
    VisitValidationStatus,
)
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user

LOCK_BATCH = 500
OVER_LIMIT = VisitValidationStatus.over_limit.value
VISIT_SKIP = (VisitValidationStatus.over_limit.value, VisitValidationStatus.trial.value)


@dataclass
class ScriptPlan:
    """The dry run: per access the works and visits past the cap, and the accrual to remove."""

    work_ids: list[int] = field(default_factory=list)
    visit_ids: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    worker_accrual: int = 0
    org_accrual: int = 0


def plan(opportunity_id: int | None = None) -> ScriptPlan:
    """For each claim limit: the access's works of that unit, not over_limit, past max_visits."""
    limits = OpportunityClaimLimit.objects.select_related(
        "opportunity_claim__opportunity_access"
    ).order_by("id")
    if opportunity_id is not None:
        limits = limits.filter(opportunity_claim__opportunity_access__opportunity_id=opportunity_id)
    per_access: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    result = ScriptPlan()
    for limit in limits.iterator(chunk_size=2000):
        access = limit.opportunity_claim.opportunity_access
        over = list(
            CompletedWork.objects.filter(
                opportunity_access_id=access.pk, payment_unit_id=limit.payment_unit_id
            )
            .exclude(status=CompletedWorkStatus.over_limit)
            .order_by("date_created", "id")
            .values_list("id", "saved_payment_accrued", "saved_org_payment_accrued")[
                limit.max_visits :
            ]
        )
        if not over:
            continue
        work_ids = [w[0] for w in over]
        visit_ids = list(
            UserVisit.objects.filter(completed_work_id__in=work_ids)
            .exclude(status__in=VISIT_SKIP)
            .values_list("id", flat=True)
        )
        totals = per_access[access.pk]
        totals[0] += len(work_ids)
        totals[1] += len(visit_ids)
        totals[2] += sum(w[1] for w in over)
        totals[3] += sum(w[2] for w in over)
        result.work_ids.extend(work_ids)
        result.visit_ids.extend(visit_ids)
    for access_id, (works, visits, worker, org) in sorted(per_access.items()):
        result.lines.append(
            f"access {access_id}: {works} works, {visits} visits -> over_limit; "
            f"worker accrual -{worker}, org accrual -{org}"
        )
        result.worker_accrual += worker
        result.org_accrual += org
    return result


def _flip(model, targets: dict[int, tuple[str, object]]) -> int:
    """Lock and write ``targets`` (id -> (status, status_modified_date or None)) by 500s."""
    ids = sorted(targets)
    written = 0
    for start in range(0, len(ids), LOCK_BATCH):
        chunk = ids[start : start + LOCK_BATCH]
        rows = list(model.objects.select_for_update().filter(pk__in=chunk).order_by("pk"))
        for row in rows:
            status, modified = targets[row.pk]
            row.status = status  # the host's __setattr__ stamps status_modified_date = now()
            if modified is not None:
                row.status_modified_date = modified
        model.objects.bulk_update(rows, ["status", "status_modified_date"])
        written += len(rows)
    return written


def apply(
    visits: dict[int, tuple[str, object]], works: dict[int, tuple[str, object]]
) -> tuple[int, int]:
    """The script's apply: one transaction, 500-row locks, ``bulk_update``; no history."""
    with transaction.atomic():
        flipped_visits = _flip(UserVisit, visits)
        flipped_works = _flip(CompletedWork, works)
    return flipped_visits, flipped_works


def recompute(access_ids: list[int], on_access=None) -> int:
    """The script's recompute loop: the host's full recompute, once per access."""
    done = 0
    for access_id in access_ids:
        access = OpportunityAccess.objects.select_related("opportunity").get(pk=access_id)
        if on_access is not None:
            on_access(access_id)
        update_payment_accrued_for_user(access, incremental=False)
        done += 1
    return done
