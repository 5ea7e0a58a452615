"""The ledger's recompute after an apply, against the host's own bulk accrual task.

The ledger recomputes each access in a transaction of its own, with the host's
``update_payment_accrued_for_user`` and fewer statements around it than before (one statement
reads the access with what the host reads of it, claims the recompute rows and, where the
accrual lock ends with the transaction, locks the rows). Whatever it saves, the host's own
``bulk_update_payment_accrued`` — what the host queues after an import — must find nothing to
change, in every currency.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger import host
from ledger.models import AccrualRecompute

KES_RATE = Decimal("129.5")


def _cells(access_ids):
    works = sorted(
        host.CompletedWork.objects.filter(opportunity_access_id__in=access_ids).values_list(
            "pk", "status", "reason", "saved_completed_count", "saved_approved_count",
            "saved_payment_accrued", "saved_payment_accrued_usd", "saved_org_payment_accrued",
            "saved_org_payment_accrued_usd",
        )
    )  # fmt: skip
    accruals = sorted(
        host.OpportunityAccess.objects.filter(pk__in=access_ids).values_list(
            "pk", "payment_accrued"
        )
    )
    return works, accruals


@pytest.mark.parametrize(
    "code, rate, amount", [("USD", None, 100), ("KES", KES_RATE, 1300)], ids=["usd", "kes"]
)
def test_the_recompute_leaves_nothing_for_the_hosts_bulk_task(
    world, corrections, apply, code, rate, amount
):
    opp = world.opportunity(code, rate)
    unit = world.unit(opp, amount=amount, org_amount=amount // 5, forms=2)
    accesses = [world.access(opp, {unit: 2}) for _ in range(3)]
    for access, works in zip(accesses, (4, 3, 5), strict=True):
        for _ in range(works):
            world.work(access, unit)
    world.settle(*accesses)

    planned = corrections(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "contract",
        "--json",
    )  # fmt: skip
    assert planned.code == 0, planned.err
    applied = apply(planned.json, "--json")
    assert applied.code == 0, applied.err
    ids = [a.pk for a in accesses]
    rows = AccrualRecompute.objects.filter(batch_id=planned.json["batch"])
    assert sorted(rows.values_list("access_id", "state")) == [(pk, "done") for pk in sorted(ids)]
    after = _cells(ids)
    for access_id, accrual in after[1]:
        assert rows.get(access_id=access_id).accrual_after == accrual

    host.bulk_update_payment_accrued(opp.pk, [a.user_id for a in accesses])
    assert _cells(ids) == after
