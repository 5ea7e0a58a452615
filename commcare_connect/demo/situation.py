"""Where each worker stands against the cap, the way the reviewed remediation script counted.

Completed works (not over_limit) are counted per (access, payment unit) in ``date_created, id``
order: ``date_created`` was back-filled with one shared default on old rows, so the id is the
only reliable tie-breaker. Every work ranked past the claim limit's ``max_visits`` is over the
cap, whatever the processor or a reviewer marked it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from django.db.models import F, Window
from django.db.models.functions import RowNumber

from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    OpportunityClaimLimit,
)


@dataclass
class CapRow:
    """One claim limit of one access: the cap, the works under it and those past it."""

    opportunity_id: int
    opportunity_name: str
    access_id: int
    username: str
    suspended: bool
    payment_unit_id: int
    payment_unit: str
    cap: int
    works: int = 0
    over_cap_work_ids: list[int] = field(default_factory=list)
    over_cap_accrued: int = 0
    over_cap_org_accrued: int = 0
    payment_accrued: int = 0

    @property
    def over_cap(self) -> int:
        return len(self.over_cap_work_ids)


def over_cap_situation(opportunity_ids: Iterable[int]) -> list[CapRow]:
    """One row per claim limit of the opportunities' accesses, ordered by opportunity and access.

    Two queries whatever the size: the claim limits, and the ranked works (a window function),
    so it also serves on scale data.
    """
    ids = list(opportunity_ids)
    rows: dict[tuple[int, int], CapRow] = {}
    limits = (
        OpportunityClaimLimit.objects.filter(
            opportunity_claim__opportunity_access__opportunity_id__in=ids
        )
        .values_list(
            "opportunity_claim__opportunity_access_id",
            "opportunity_claim__opportunity_access__opportunity_id",
            "opportunity_claim__opportunity_access__opportunity__name",
            "opportunity_claim__opportunity_access__user__username",
            "opportunity_claim__opportunity_access__suspended",
            "opportunity_claim__opportunity_access__payment_accrued",
            "payment_unit_id",
            "payment_unit__name",
            "max_visits",
        )
        .order_by(
            "opportunity_claim__opportunity_access__opportunity_id",
            "opportunity_claim__opportunity_access_id",
            "payment_unit_id",
        )
    )
    for access_id, opp_id, opp_name, username, suspended, accrued, pu_id, pu_name, cap in limits:
        rows[(access_id, pu_id)] = CapRow(
            opportunity_id=opp_id,
            opportunity_name=opp_name,
            access_id=access_id,
            username=username or "",
            suspended=suspended,
            payment_unit_id=pu_id,
            payment_unit=pu_name,
            cap=cap,
            payment_accrued=accrued,
        )

    ranked = (
        CompletedWork.objects.filter(opportunity_access__opportunity_id__in=ids)
        .exclude(status=CompletedWorkStatus.over_limit)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("opportunity_access_id"), F("payment_unit_id")],
                order_by=[F("date_created").asc(), F("id").asc()],
            )
        )
        .order_by("opportunity_access_id", "payment_unit_id", "rank")
        .values_list(
            "id",
            "opportunity_access_id",
            "payment_unit_id",
            "rank",
            "saved_payment_accrued",
            "saved_org_payment_accrued",
        )
    )
    for work_id, access_id, pu_id, rank, accrued, org_accrued in ranked.iterator(chunk_size=5000):
        row = rows.get((access_id, pu_id))
        if row is None:  # no claim limit, so no cap to be over
            continue
        row.works += 1
        if rank > row.cap:
            row.over_cap_work_ids.append(work_id)
            row.over_cap_accrued += accrued
            row.over_cap_org_accrued += org_accrued
    return list(rows.values())


def over_cap_totals(rows: Iterable[CapRow]) -> dict[str, int]:
    """Totals the dry run of the remediation script printed: works, accesses, accrual."""
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.over_cap:
            totals["works"] += row.over_cap
            totals["accesses"] += 1
            totals["accrued"] += row.over_cap_accrued
            totals["org_accrued"] += row.over_cap_org_accrued
    return dict(totals)


def print_situation(rows: Iterable[CapRow], stdout: TextIO) -> None:
    """A fixed-width table, one line per claim limit, for the commands' output."""
    header = (
        f"{'opportunity':<20} {'access':>8} {'worker':<20} {'susp':<4} {'cap':>4} "
        f"{'works':>5} {'over':>4} {'over accrued':>12} {'accrued':>9}"
    )
    stdout.write(header + "\n")
    for row in rows:
        stdout.write(
            f"{row.opportunity_name[:20]:<20} {row.access_id:>8} {row.username[:20]:<20} "
            f"{'yes' if row.suspended else 'no':<4} {row.cap:>4} {row.works:>5} "
            f"{row.over_cap:>4} {row.over_cap_accrued:>12} {row.payment_accrued:>9}\n"
        )
