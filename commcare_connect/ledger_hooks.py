"""How this project plugs its host-side locking into the correction ledger.

The ledger's projector calls ``settings.LEDGER_ACCESS_LOCK`` with the sorted ids of the accesses
a batch touches, inside the projection's transaction. The host serialises accrual recomputes per
access (a Redis lock in production, a PostgreSQL advisory lock in this stand-in); holding the
same lock while statuses flip means a recompute that read visits before the flip cannot write
its stale result afterwards.
"""

from collections.abc import Sequence

from django.db import connection

from commcare_connect.opportunity.visit_import import ACCRUAL_LOCK_NAMESPACE


def lock_accesses_for_transaction(access_ids: Sequence[int]) -> None:
    """Take the accrual lock of every access until the transaction ends, in id order."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(%s, (a %% 2147483647)::int)) "
            "FROM unnest(%s::bigint[]) AS u(a)",
            [ACCRUAL_LOCK_NAMESPACE, sorted(access_ids)],
        )
