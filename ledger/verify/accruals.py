"""``accruals``: the accesses the ledger touched hold what the host's own code computes now."""

from __future__ import annotations

import random

from django.db import transaction

from ledger import accrual_rules, accruals, host
from ledger.errors import LedgerError
from ledger.sql import db_now, read_only_snapshot
from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, tables

DEFAULT_SAMPLE = 500


def check_accruals(sample: int | None = DEFAULT_SAMPLE) -> Result:
    """Every access the ledger ever touched holds what the host's own code computes now.

    The accesses are those of every event and every recompute row — not only those a
    recompute marked done, so an event written without its recompute is covered too — less
    those with a recompute still pending (``recomputes`` reports them). Each access is
    held to what the host's recompute would give it now: the projection of the host's rules
    that prices plans (:mod:`ledger.accrual_rules`, held to the host's own code by the
    contract suite), all accesses at once from one snapshot — or, for an access whose result
    depends on the order the host's query returns its works, the host's own code in a
    savepoint that is rolled back. Nothing changes. ``sample`` bounds how many accesses are
    looked at (chosen at random); None or 0 checks them all.
    """
    t = tables()
    access_ids = [
        pk for (pk,) in fetchall(
            f"""SELECT access_id FROM (
                    SELECT DISTINCT access_id FROM {t["event"]} WHERE access_id IS NOT NULL
                    UNION
                    SELECT access_id FROM {t["recompute"]}
                ) touched
                WHERE NOT EXISTS (SELECT 1 FROM {t["recompute"]} r
                                  WHERE r.access_id = touched.access_id AND r.state = 'pending')
                ORDER BY 1"""
        )
    ]  # fmt: skip
    total_accesses = len(access_ids)
    if sample and total_accesses > sample:
        access_ids = sorted(random.sample(access_ids, sample))
    stored = dict(
        host.OpportunityAccess.objects.filter(pk__in=access_ids).values_list(
            "pk", "payment_accrued"
        )
    )
    access_ids = [pk for pk in access_ids if pk in stored]  # the others are gone
    try:
        computed = _host_recompute(access_ids)
    except LedgerError as error:  # a rate the host would have to fetch: it cannot say either
        problem = Problem(check="accruals", message=f"cannot recompute the accruals: {error}")
        return len(access_ids), 1, [problem], ""
    problems = [
        Problem(
            check="accruals",
            entity_kind="access",
            entity_id=access_id,
            message=(
                f"access {access_id}: payment_accrued is {stored[access_id]}, the "
                f"host's recompute gives {computed[access_id]} (stale: a recompute marked "
                "done that did not run, or a change since)"
            ),
            expected=str(computed[access_id]),
            found=str(stored[access_id]),
        )
        for access_id in access_ids
        if computed[access_id] != stored[access_id]
    ]
    note = f"{len(access_ids)} of {total_accesses} accesses"
    return len(access_ids), len(problems), problems[:MAX_PROBLEMS_PER_CHECK], note


def _host_recompute(access_ids: list[int]) -> dict[int, int]:
    """What the host's full recompute gives each access now, changing nothing."""
    if not access_ids:
        return {}
    with read_only_snapshot():
        projection = accrual_rules.project([], access_ids, now=db_now())
    computed = {pk: projection.sums[pk].pay_after for pk in access_ids}
    if projection.order_dependent:
        with transaction.atomic():
            for pk in sorted(projection.order_dependent):
                computed[pk] = accruals.recompute_access(pk, rollback=True)
            transaction.set_rollback(True)
    return computed
