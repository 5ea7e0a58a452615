"""The host's Celery tasks that touch accruals and exchange rates (``opportunity.tasks``).

There is no Celery here: :func:`task` gives a function the ``delay`` and ``apply_async`` a
Celery task has, both running it at once in the caller's process and transaction.
"""

from __future__ import annotations

import functools

from commcare_connect.opportunity.accrual_lock import payment_accrued_lock
from commcare_connect.opportunity.models import CompletedWorkStatus, OpportunityAccess
from commcare_connect.opportunity.utils.completed_work import update_status

EXCHANGE_RATES_SERVICE = "https://openexchangerates.org/api"


class ExternalRateFetchError(RuntimeError):
    """Raised where the host would download an exchange rate from the external service."""


def task(func):
    """Mark ``func`` as a task: callable directly, or through ``delay``/``apply_async``."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        return func(*args, **kwargs)

    def apply_async(args=None, kwargs=None, **_options):
        return func(*(args or ()), **(kwargs or {}))

    run.delay = run
    run.apply_async = apply_async
    return run


@task
def bulk_update_payment_accrued(opportunity_id, user_ids: list):
    """Recompute every non-rejected completed work of the users' non-suspended accesses.

    What the host queues after a visit-status or completed-work-status import. Each access is
    recomputed under its accrual lock; the rejected works are left as they are.
    """
    accesses = OpportunityAccess.objects.filter(
        opportunity=opportunity_id, user__in=user_ids, suspended=False
    )
    for access in accesses:
        with payment_accrued_lock(access.id):
            works = access.completedwork_set.exclude(
                status=CompletedWorkStatus.rejected
            ).select_related("payment_unit")
            update_status(works, access, compute_payment=True)


@task
def fetch_exchange_rates(date=None, currency=None):
    """The host downloads rates here (and stores them); this stand-in never goes online.

    Anything that reaches this function would, in the host, make an HTTP request to the
    external rates service in the middle of its work, so it fails loudly instead.
    """
    what = f"the {currency} rate" if currency else "the rates of every opportunity currency"
    when = f" for {date:%Y-%m-%d}" if date is not None else " for the current month"
    raise ExternalRateFetchError(
        f"No stored exchange rate: the host would fetch {what}{when} from the external rates "
        f"service ({EXCHANGE_RATES_SERVICE}) over HTTP and store it. This stand-in makes no "
        "network calls; store an ExchangeRate row on or before that date instead."
    )
