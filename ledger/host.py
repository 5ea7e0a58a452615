"""The ledger's one door to the host (CommCare Connect).

Every model, enum and function of the host that the ledger reads, writes or calls is named
here and nowhere else, so a change in the host is fixed in this module. The names exist in the
host at ``commcare_connect.opportunity`` (checked against commit 8f79228b; see
``docs/host-fidelity.md``). Two host facts shape the accessors below:

* ``Opportunity.currency`` is a foreign key to ``Currency`` (whose primary key is the ISO code),
  not a code: read codes with :func:`currency_codes`, never ``str(opportunity.currency)``.
* The host's ``update_status`` assigns ``payment_accrued`` on the access object it is given and
  saves it. Callers that keep using the object afterwards (pricing) pass a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

from django.utils.module_loading import import_string

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    Currency,
    DeliverUnit,
    ExchangeRate,
    Opportunity,
    OpportunityAccess,
    OpportunityClaim,
    OpportunityClaimLimit,
    Payment,
    PaymentInvoice,
    PaymentUnit,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.utils.completed_work import update_status
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import conf

__all__ = [
    "CompletedWork",
    "CompletedWorkStatus",
    "Currency",
    "DeliverUnit",
    "ExchangeRate",
    "Opportunity",
    "OpportunityAccess",
    "OpportunityClaim",
    "OpportunityClaimLimit",
    "Payment",
    "PaymentInvoice",
    "PaymentUnit",
    "UserVisit",
    "VisitReviewStatus",
    "VisitValidationStatus",
    "access_lock",
    "accesses_for_recompute",
    "bulk_update_payment_accrued",
    "currency_codes",
    "recompute_access",
    "recompute_loaded",
    "simulate_recompute",
]


def currency_codes(opportunity_ids: Iterable[int]) -> dict[int, str | None]:
    """Each opportunity's ISO currency code (``None`` where the host has no currency set)."""
    return dict(
        Opportunity.objects.filter(pk__in=list(opportunity_ids)).values_list("pk", "currency__code")
    )


def simulate_recompute(access: OpportunityAccess) -> int:
    """What the host's full recompute of ``access`` would do; return the new accrual.

    The same computation as ``update_payment_accrued_for_user(access, incremental=False)`` —
    the host's ``update_status`` over every completed work of the access — without taking the
    accrual lock: meant for a transaction the caller has locked its rows in and rolls back. The
    host assigns and saves ``payment_accrued`` on the object it is given, so it gets a copy: the
    caller's object keeps the accrual as it is now.

    The works are taken in id order. The host's own query has no order, and the result can
    depend on it in one case (a work of a unit whose child units the worker never worked, under
    a worked parent unit; see :mod:`ledger.accrual_rules`): id order is the one the ledger's
    projection follows.
    """
    scratch = copy.copy(access)
    works = (
        CompletedWork.objects.filter(opportunity_access_id=access.pk)
        .select_related("payment_unit")
        .order_by("id")
    )
    update_status(works, scratch, compute_payment=True)
    return scratch.payment_accrued


def accesses_for_recompute():
    """Accesses read with what the host's recompute reads of them: the opportunity and its
    currency (one query for what would otherwise be three)."""
    return OpportunityAccess.objects.select_related("opportunity__currency")


def recompute_access(access_id: int) -> int | None:
    """The host's full recompute of one access; its new ``payment_accrued`` (None: no access)."""
    access = accesses_for_recompute().filter(pk=access_id).first()
    if access is None:
        return None
    return recompute_loaded(access)


def recompute_loaded(access: OpportunityAccess) -> int:
    """The host's full recompute of an access the caller has just read; its new accrual.

    ``incremental=False`` because the incremental mode skips works accrued before and since
    corrected, which is exactly what a correction changes. The host saves the whole access
    object from memory, so it must be read in the recompute's transaction, not earlier.
    """
    update_payment_accrued_for_user(access, incremental=False)
    return access.payment_accrued


Release = Callable[[], None]


def bulk_update_payment_accrued(opportunity_id: int, user_ids: list[int]) -> None:
    """The host's own bulk accrual task (``opportunity.tasks``), run here and now: what the host
    queues after an import. The ledger never calls it; the contract suite checks that the
    ledger's recompute leaves nothing for it to change."""
    from commcare_connect.opportunity.tasks import bulk_update_payment_accrued as task

    task(opportunity_id, user_ids)


def access_lock() -> Callable[[Sequence[int], float], Release] | None:
    """The configured ``LEDGER_ACCESS_LOCK`` implementation, or None when none is set.

    The callable takes the sorted access ids and a bounded wait in seconds, holds the host's
    accrual lock of every access, and returns the function that releases them; when it cannot
    take them all within the wait it releases what it took and raises
    :class:`ledger.errors.LockBusy`. See :mod:`ledger.locks`.
    """
    path = conf.get("ACCESS_LOCK")
    return import_string(path) if path else None
