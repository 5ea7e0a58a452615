"""The incident demo as a sequence of steps, each printing what it did.

Kept as plain functions on one ``stdout`` so later steps (the ledger's plan, apply and
verification) can be appended to :func:`run` without touching the command.
"""

from __future__ import annotations

from typing import TextIO

from commcare_connect.demo.incident import IncidentData, build_incident
from commcare_connect.demo.situation import over_cap_situation, over_cap_totals, print_situation


def _heading(stdout: TextIO, title: str) -> None:
    stdout.write(f"\n== {title} ==\n")


def seed(stdout: TextIO) -> IncidentData:
    _heading(stdout, "1. Seed the incident through the form processor (duplicate-flag bug on)")
    return build_incident(stdout)


def show_over_cap(data: IncidentData, stdout: TextIO) -> dict[int, dict[str, int]]:
    """Print the per-access table and per-opportunity totals; return the totals by opportunity."""
    _heading(stdout, "2. Works past each worker's cap (date_created, id order)")
    rows = over_cap_situation(data.opportunity_ids)
    print_situation(rows, stdout)
    totals: dict[int, dict[str, int]] = {}
    for opp in (data.opportunity_a, data.opportunity_b):
        opp_totals = over_cap_totals(r for r in rows if r.opportunity_id == opp.pk)
        totals[opp.pk] = opp_totals
        stdout.write(
            f"{opp.name}: {opp_totals.get('works', 0)} works over the cap across "
            f"{opp_totals.get('accesses', 0)} accesses; worker accrual "
            f"{opp_totals.get('accrued', 0)} {opp.currency}, org accrual "
            f"{opp_totals.get('org_accrued', 0)} {opp.currency}\n"
        )
    return totals


def run(stdout: TextIO) -> IncidentData:
    data = seed(stdout)
    show_over_cap(data, stdout)
    return data
