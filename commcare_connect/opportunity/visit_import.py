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
    """Serialise recomputes of one access.

    Inside a transaction the lock is transaction-scoped: the commit or rollback releases it, so
    a recompute that fails cannot leave it held (a session lock would outlive the rollback, and
    its unlock cannot even run in the aborted transaction), and no other recompute can read the
    access's rows before this one's writes are committed. In autocommit mode it is a session
    lock, released on exit.
    """
    key = accrual_lock_key(access_id)
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
        yield
        return
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
    # In id order: inside a transaction each access's lock is held until the end, and a fixed
    # order keeps two such transactions from deadlocking on each other.
    accesses = (
        OpportunityAccess.objects.filter(opportunity=opportunity, user__in=users, suspended=False)
        .select_related("opportunity")
        .order_by("id")
    )
    for access in accesses:
        update_payment_accrued_for_user(access, incremental=incremental)
