"""The host's accrual entry points and exchange-rate lookup (``opportunity.visit_import``).

Only the parts of the host module the correction ledger (or this stand-in's processor and
seeds) calls; the file imports of visits, payments and catchments are not mirrored.
"""

from __future__ import annotations

from django.db.models import Q
from django.utils.timezone import now

from commcare_connect.opportunity.accrual_lock import (  # noqa: F401 - re-exported
    ACCRUAL_LOCK_NAMESPACE,
    accrual_lock_key,
    payment_accrued_lock,
)
from commcare_connect.opportunity.models import (
    CompletedWorkStatus,
    ExchangeRate,
    Opportunity,
    OpportunityAccess,
)
from commcare_connect.opportunity.utils.completed_work import update_status


class ImportException(Exception):
    def __init__(self, message, rows=None, errors=None):
        self.message = message
        self.rows = rows
        # {description: [row numbers]}
        self.errors = errors or {}


def update_payment_accrued(opportunity: Opportunity, users, incremental=False):
    """Recompute the accesses of ``users`` on ``opportunity`` that are not suspended."""
    # The host does not order these; in id order here, because without Redis the accrual lock
    # of each access is held to the end of an enclosing transaction, and a fixed order keeps
    # two such transactions from deadlocking on each other.
    accesses = OpportunityAccess.objects.filter(
        user__in=users, opportunity=opportunity, suspended=False
    ).order_by("id")
    for access in accesses:
        update_payment_accrued_for_user(access, incremental)


def update_payment_accrued_for_user(opportunity_access, incremental, completed_work_id=None):
    """Recompute the access's completed works and its ``payment_accrued``, under its lock.

    ``incremental`` looks only at works never approved (``saved_approved_count == 0`` and not
    approved) plus, when given, the work ``completed_work_id`` (the processor passes the work
    that just received a visit). A work accrued earlier and since set to over_limit is skipped,
    so corrections must recompute with ``incremental=False``.

    ``update_status`` assigns ``opportunity_access.payment_accrued`` and saves the whole access
    object (every field, from memory).
    """
    selection = Q()
    if incremental:
        selection = Q(saved_approved_count=0) & ~Q(status=CompletedWorkStatus.approved)
        if completed_work_id is not None:
            selection |= Q(id=completed_work_id)

    with payment_accrued_lock(opportunity_access.id):
        works = opportunity_access.completedwork_set.filter(selection).select_related(
            "payment_unit"
        )
        update_status(works, opportunity_access, compute_payment=True)


def get_exchange_rate(currency_code, date=None):
    """Units of ``currency_code`` per US dollar on ``date`` (today when ``None``).

    USD is the integer 1. Otherwise the latest stored rate on or before the date; when none is
    stored the host fetches one from an external service (see ``ExchangeRate``).
    """
    if currency_code is None:
        raise ImportException("Opportunity must have specified currency to import payments")
    currency_code = currency_code.upper()
    if currency_code == "USD":
        return 1
    rate = ExchangeRate.latest_exchange_rate(
        currency_code=currency_code, date=date or now().date()
    ).rate
    if not rate:
        raise ImportException("Rate not found for opportunity currency")
    return rate
