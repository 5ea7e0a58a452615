"""The host's accrual recompute entry points (``update_payment_accrued*``)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

from django.db import connection
from django.db.models import Sum

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    Opportunity,
    OpportunityAccess,
)
from commcare_connect.opportunity.utils.completed_work import update_status

# The host serialises recomputes of one access with a Redis lock named
# ``update_payment_accrued_lock_<access id>``; a PostgreSQL advisory lock keyed by the access id
# serves the same purpose here without Redis.
ACCRUAL_LOCK_NAMESPACE = 0x43435041  # "CCPA"


def accrual_lock_key(access_id: int) -> tuple[int, int]:
    return ACCRUAL_LOCK_NAMESPACE, access_id % 2147483647


@contextmanager
def payment_accrued_lock(access_id: int):
    key = accrual_lock_key(access_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def update_payment_accrued_for_user(access: OpportunityAccess, incremental: bool = False) -> None:
    """Recompute every completed work of ``access`` and its ``payment_accrued``.

    ``incremental=True`` only looks at works never approved; a work accrued earlier and since
    set to over_limit is skipped, so corrections must recompute with ``incremental=False``.
    """
    with payment_accrued_lock(access.pk):
        works = CompletedWork.objects.filter(opportunity_access_id=access.pk).select_related(None)
        if incremental:
            works = works.filter(saved_approved_count=0).exclude(
                status=CompletedWorkStatus.approved
            )
        update_status(works, access, compute_payment=True)
        total = CompletedWork.objects.filter(opportunity_access_id=access.pk).aggregate(
            total=Sum("saved_payment_accrued")
        )["total"]
        access.payment_accrued = total or 0
        access.save(update_fields=["payment_accrued"])


def update_payment_accrued(
    opportunity: Opportunity, users: Iterable, incremental: bool = False
) -> None:
    """Recompute the accesses of ``users`` on ``opportunity`` that are not suspended."""
    accesses = OpportunityAccess.objects.filter(
        opportunity=opportunity, user__in=users, suspended=False
    ).select_related("opportunity")
    for access in accesses:
        update_payment_accrued_for_user(access, incremental=incremental)
