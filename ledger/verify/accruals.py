"""``accruals``: the accesses the ledger touched hold what the host's own code computes now."""

from __future__ import annotations

import random

from django.db import transaction

from ledger import accruals, host
from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, tables

DEFAULT_SAMPLE = 500


def check_accruals(sample: int | None = DEFAULT_SAMPLE) -> Result:
    """Every access the ledger ever touched holds what the host's own code computes now.

    The accesses are those of every event and every recompute row — not only those a
    recompute marked done, so an event written without its recompute is covered too — less
    those with a recompute still pending (``recomputes`` reports them). Each access is
    recomputed by the host inside a savepoint that is rolled back, so nothing changes.
    ``sample`` bounds how many accesses are looked at (chosen at random); None or 0 checks
    them all.
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
    problems = []
    with transaction.atomic():
        for access_id in access_ids:
            if access_id not in stored:
                continue  # the access is gone
            computed = accruals.recompute_access(access_id, rollback=True)
            if computed != stored[access_id]:
                problems.append(
                    Problem(
                        check="accruals",
                        entity_kind="access",
                        entity_id=access_id,
                        message=(
                            f"access {access_id}: payment_accrued is {stored[access_id]}, the "
                            f"host's recompute gives {computed} (stale: a recompute marked "
                            "done that did not run, or a change since)"
                        ),
                        expected=str(computed),
                        found=str(stored[access_id]),
                    )
                )
        transaction.set_rollback(True)
    note = f"{len(access_ids)} of {total_accesses} accesses"
    return len(access_ids), len(problems), problems[:MAX_PROBLEMS_PER_CHECK], note
