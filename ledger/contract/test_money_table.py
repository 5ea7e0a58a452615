"""The money table: what a correction costs, held to figures worked out by hand.

Each scenario builds a small world with the host's models, plans a correction, and holds two
things to figures typed below — never computed by the code under test:

* the priced plan, per access: works and visits flipped, the accrual now, the worker's and the
  organisation's change in local currency and in USD, the projected accrual, paid to date and
  the overpayment exposure (and the plan's USD totals);
* what the recompute after apply leaves, per work (status and the six ``saved_*`` figures) and
  per access (``payment_accrued``).

The figures follow the host's accrual rules (``update_status`` in
``commcare_connect/opportunity/utils/completed_work.py``, ``get_exchange_rate`` in
``visit_import.py``), which the suite runs unchanged inside the real host:

* a work counts, per required form, its visits (completed) and its approved *and* agreed visits
  (approved), and takes the minimum over the required forms; with optional forms, that is
  capped by the total over the optional forms; with child payment units, by the sum of the
  child works' counts (same access, same entity);
* a rejected visit makes the work rejected; a work whose required forms (and one optional form,
  if any) all have an approved, agreed visit is approved; otherwise its status stays;
* pay is ``approved × amount`` (and ``× org_amount``) when the work is approved, else 0; USD is
  pay divided by the rate stored on or before the work's ``status_modified_date`` (1 for USD),
  rounded to cents when stored. A flip stamps today, so re-approved work is priced at today's
  rate, not at the month it was first approved in;
* ``payment_accrued`` is the sum of the worker's pay over the access's works.

The over-cap planner flips the works ranked past a claim limit (in creation order, over_limit
works not counted) and their visits to over_limit; paid and rejected works are left alone.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.utils import timezone

from ledger import host

if TYPE_CHECKING:
    from ledger.contract.conftest import World

KES = D("129.5")  # the rate the world stores for KES, from 2025-01-01 on


def _at(year: int, month: int, day: int) -> datetime.datetime:
    return datetime.datetime(year, month, day, 12, 0, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Line:
    """One access's line of the priced plan, typed by hand."""

    works: int
    visits: int
    accrual_now: int
    worker: int
    worker_usd: D
    org: int
    org_usd: D
    projected: int
    paid: D = D(0)
    exposure: D = D(0)
    suspended: bool = False


@dataclass(frozen=True)
class Saved:
    """A work after the recompute that follows the apply, typed by hand."""

    status: str
    completed: int
    approved: int
    pay: int
    pay_usd: D
    org: int
    org_usd: D


def kept(completed, approved, pay, pay_usd, org, org_usd, status="approved") -> Saved:
    return Saved(status, completed, approved, pay, D(pay_usd), org, D(org_usd))


def over_limit(completed: int = 1) -> Saved:
    return Saved("over_limit", completed, 0, 0, D(0), 0, D(0))


def unpaid(status: str, completed: int = 1) -> Saved:
    return Saved(status, completed, 0, 0, D(0), 0, D(0))


@dataclass
class Built:
    """What a scenario's builder made: the plan's arguments and the rows, by label."""

    plan: list[str]
    accesses: dict[str, object]
    works: dict[str, object]


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[World, Path], Built]
    lines: dict[str, Line]  # accesses in the plan
    works: dict[str, Saved]  # every labelled work after the apply
    usd_totals: tuple[D, D]  # the plan's worker and org change in USD, all accesses
    untouched: dict[str, int] = field(default_factory=dict)  # accesses the plan leaves alone
    exclusions: dict[str, list[str]] = field(default_factory=dict)  # reason -> work labels


def _over_cap(opp, *extra: str) -> list[str]:
    return ["over-cap", "--opportunity", str(opp.opportunity_id), *extra]


def _visits(tmp_path: Path, to: str, *works) -> list[str]:
    """A visit list naming every visit of ``works``, to be flipped to ``to``."""
    ids = host.UserVisit.objects.filter(completed_work__in=works).values_list("xform_id", flat=True)
    path = tmp_path / "xforms.txt"
    path.write_text("\n".join(sorted(ids)) + "\n")
    return ["visits", "--xform-ids", str(path), "--to", to]


def _works(world: World, access, unit, *labels: str, **kwargs) -> dict[str, object]:
    """One work per label, in creation (and so cap-ranking) order."""
    return {label: world.work(access, unit, **kwargs) for label in labels}


# -- the scenarios -------------------------------------------------------------------------------


def build_usd_cap(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=20)
    access = world.access(opp, {unit: 2})
    works = _works(world, access, unit, "w1", "w2", "w3", "w4")
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


USD_CAP = Scenario(
    "usd-one-form-cap-2",
    build_usd_cap,
    lines={"a": Line(2, 2, 400, -200, D(-200), -40, D(-40), 200)},
    works={
        "w1": kept(1, 1, 100, 100, 20, 20),
        "w2": kept(1, 1, 100, 100, 20, 20),
        "w3": over_limit(),
        "w4": over_limit(),
    },
    usd_totals=(D(-200), D(-40)),
)


def build_kes_rate(world, tmp_path):
    opp = world.opportunity("KES", KES)
    unit = world.unit(opp, amount=1300, org_amount=250)
    access = world.access(opp, {unit: 1})
    works = _works(world, access, unit, "w1", "w2", "w3")
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# 1300 / 129.5 = 10.0386… → 10.04; 250 / 129.5 = 1.9305… → 1.93
KES_RATE = Scenario(
    "kes-at-129.5",
    build_kes_rate,
    lines={"a": Line(2, 2, 3900, -2600, D("-20.08"), -500, D("-3.86"), 1300)},
    works={"w1": kept(1, 1, 1300, "10.04", 250, "1.93"), "w2": over_limit(), "w3": over_limit()},
    usd_totals=(D("-20.08"), D("-3.86")),
)


def build_two_months(world, tmp_path):
    world.rate("UGX", datetime.date(2025, 3, 1), D(3700))
    world.rate("UGX", datetime.date(2025, 4, 1), D(3650))
    opp = world.opportunity("UGX")
    unit = world.unit(opp, amount=5000, org_amount=2000)
    access = world.access(opp, {unit: 1})
    works = {
        "march-1": world.work(access, unit, modified=_at(2025, 3, 14)),
        "march-2": world.work(access, unit, modified=_at(2025, 3, 20)),
        "april": world.work(access, unit, modified=_at(2025, 4, 10)),
    }
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# March at 3700: 5000 → 1.35, 2000 → 0.54; April at 3650: 5000 → 1.37, 2000 → 0.55.
TWO_MONTHS = Scenario(
    "two-months-two-rates",
    build_two_months,
    lines={"a": Line(2, 2, 15000, -10000, D("-2.72"), -4000, D("-1.09"), 5000)},
    works={"march-1": kept(1, 1, 5000, "1.35", 2000, "0.54"), "march-2": over_limit(),
           "april": over_limit()},
    usd_totals=(D("-2.72"), D("-1.09")),
)  # fmt: skip


def build_optional(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=10, forms=1, optional=2)
    (req,), (opt_a, opt_b) = unit.required, unit.optional
    access = world.access(opp, {unit: 2})
    works = {
        "req+a": world.work(access, unit, forms=[req, opt_a]),
        "req-only": world.work(access, unit, forms=[req]),
        "req+b": world.work(access, unit, forms=[req, opt_b]),
        "req+a+b": world.work(access, unit, forms=[req, opt_a, opt_b]),
        "2req+a": world.work(access, unit, forms=[req, req, opt_a]),
    }
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# A work without an optional form completes nothing and earns nothing (yet takes a place under
# the cap); the optional forms' total caps a duplicate required form (min(2, 1) = 1).
OPTIONAL = Scenario(
    "optional-forms",
    build_optional,
    lines={"a": Line(3, 8, 400, -300, D(-300), -30, D(-30), 100)},
    works={
        "req+a": kept(1, 1, 100, 100, 10, 10),
        "req-only": unpaid("approved", completed=0),
        "req+b": over_limit(),
        "req+a+b": over_limit(),
        "2req+a": over_limit(),
    },
    usd_totals=(D(-300), D(-30)),
)


def build_parent_child(world, tmp_path):
    opp = world.opportunity()
    parent = world.unit(opp, amount=500, org_amount=50)
    child = world.unit(opp, amount=100, org_amount=10, parent=parent)
    access = world.access(opp, {child: 1})
    works = {}
    for entity, parent_forms in (("e1", parent.required * 2), ("e2", parent.required)):
        tag = f"{entity}-{access.pk}"
        works[f"parent-{entity}"] = world.work(access, parent, forms=parent_forms, entity=tag)
        works[f"child-{entity}"] = world.work(access, child, entity=tag)
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# A parent counts at most its child works: two parent visits of e1 earn once (min(2, 1)); when
# e2's child work goes over the limit, e2's parent work keeps its status and earns nothing.
PARENT_CHILD = Scenario(
    "parent-and-child-units",
    build_parent_child,
    lines={"a": Line(1, 1, 1200, -600, D(-600), -60, D(-60), 600)},
    works={
        "parent-e1": kept(1, 1, 500, 500, 50, 50),
        "child-e1": kept(1, 1, 100, 100, 10, 10),
        "parent-e2": unpaid("approved"),
        "child-e2": over_limit(),
    },
    usd_totals=(D(-600), D(-60)),
)


def build_two_children(world, tmp_path):
    opp = world.opportunity()
    parent = world.unit(opp, amount=400, org_amount=40)
    first = world.unit(opp, amount=50, org_amount=5, parent=parent)
    second = world.unit(opp, amount=60, org_amount=6, parent=parent)
    access = world.access(opp, {first: 1})
    works = {}
    for entity in ("e1", "e2"):
        tag = f"{entity}-{access.pk}"
        for name, unit in (("parent", parent), ("first", first), ("second", second)):
            works[f"{name}-{entity}"] = world.work(access, unit, entity=tag)
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# The parent is capped by the *sum* of its child works: one child left keeps it paid.
TWO_CHILDREN = Scenario(
    "parent-with-two-child-units",
    build_two_children,
    lines={"a": Line(1, 1, 1020, -50, D(-50), -5, D(-5), 970)},
    works={
        "parent-e1": kept(1, 1, 400, 400, 40, 40),
        "first-e1": kept(1, 1, 50, 50, 5, 5),
        "second-e1": kept(1, 1, 60, 60, 6, 6),
        "parent-e2": kept(1, 1, 400, 400, 40, 40),
        "first-e2": over_limit(),
        "second-e2": kept(1, 1, 60, 60, 6, 6),
    },
    usd_totals=(D(-50), D(-5)),
)


def build_managed(world, tmp_path):
    opp = world.opportunity(managed=True)
    unit = world.unit(opp, amount=100, org_amount=20)
    access = world.access(opp, {unit: 2})
    works = {
        "agree-1": world.work(access, unit, review_status="agree"),
        "pending-review": world.work(access, unit, review_status="pending"),
        "disagree": world.work(access, unit, review_status="disagree"),
        "agree-2": world.work(access, unit, review_status="agree"),
        "agree-3": world.work(access, unit, review_status="agree"),
    }
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# Approved visits earn only once the review agrees; works under review take places under the cap.
MANAGED = Scenario(
    "managed-review-statuses",
    build_managed,
    lines={"a": Line(3, 3, 300, -200, D(-200), -40, D(-40), 100)},
    works={
        "agree-1": kept(1, 1, 100, 100, 20, 20),
        "pending-review": unpaid("approved"),
        "disagree": over_limit(),
        "agree-2": over_limit(),
        "agree-3": over_limit(),
    },
    usd_totals=(D(-200), D(-40)),
)


def build_reapproval(world, tmp_path):
    world.rate("NGN", datetime.date(2025, 3, 1), D(1500))
    world.rate("NGN", datetime.date(2025, 6, 1), D(1550))
    opp = world.opportunity("NGN", managed=True)
    unit = world.unit(opp, amount=3000, org_amount=600)
    access = world.access(opp, {unit: 10})
    march = _at(2025, 3, 10)
    works = {
        "kept": world.work(access, unit),
        "agreed": world.work(access, unit, status="over_limit", visit_status="over_limit",
                             modified=march),
        "in-review": world.work(access, unit, status="over_limit", visit_status="over_limit",
                                review_status="pending", modified=march),
    }  # fmt: skip
    world.settle(access)
    return Built(
        _visits(tmp_path, "approved", works["agreed"], works["in-review"]), {"a": access}, works
    )


# Flipped back to approved today: priced at the latest stored rate (1550 from June), not at
# March's 1500 — 3000 → 1.94 (not 2.00), 600 → 0.39 (not 0.40). The visit still in review
# makes its work approved but unpaid.
REAPPROVAL = Scenario(
    "managed-reapproval-at-todays-rate",
    build_reapproval,
    lines={"a": Line(2, 2, 3000, 3000, D("1.94"), 600, D("0.39"), 6000)},
    works={
        "kept": kept(1, 1, 3000, "1.94", 600, "0.39"),
        "agreed": kept(1, 1, 3000, "1.94", 600, "0.39"),
        "in-review": unpaid("approved"),
    },
    usd_totals=(D("1.94"), D("0.39")),
)


def build_rejected_pending(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=20)
    access = world.access(opp, {unit: 1})
    works = {
        "approved": world.work(access, unit),
        "rejected": world.work(access, unit, visit_status="rejected"),
        "pending": world.work(access, unit, visit_status="pending"),
        "past-cap": world.work(access, unit),
    }
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# The rejected work takes the second place and is left alone; the pending visit earns nothing,
# so flipping its work changes nothing.
REJECTED_PENDING = Scenario(
    "rejected-and-pending-visits",
    build_rejected_pending,
    lines={"a": Line(2, 2, 200, -100, D(-100), -20, D(-20), 100)},
    works={
        "approved": kept(1, 1, 100, 100, 20, 20),
        "rejected": unpaid("rejected"),
        "pending": over_limit(),
        "past-cap": over_limit(),
    },
    usd_totals=(D(-100), D(-20)),
    exclusions={"rejected": ["rejected"]},
)


def build_to_rejected(world, tmp_path):
    opp = world.opportunity("KES", KES)
    unit = world.unit(opp, amount=2600, org_amount=520, forms=2)
    access = world.access(opp, {unit: 5})
    works = {"kept": world.work(access, unit), "rejected": world.work(access, unit)}
    world.settle(access)
    return Built(_visits(tmp_path, "rejected", works["rejected"]), {"a": access}, works)


# 2600 / 129.5 = 20.077… → 20.08; 520 / 129.5 = 4.015… → 4.02
TO_REJECTED = Scenario(
    "visit-list-to-rejected-kes",
    build_to_rejected,
    lines={"a": Line(1, 2, 5200, -2600, D("-20.08"), -520, D("-4.02"), 2600)},
    works={"kept": kept(1, 1, 2600, "20.08", 520, "4.02"), "rejected": unpaid("rejected")},
    usd_totals=(D("-20.08"), D("-4.02")),
)


def build_to_pending(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=150, org_amount=30)
    access = world.access(opp, {unit: 5})
    works = {"kept": world.work(access, unit), "pending": world.work(access, unit)}
    world.settle(access)
    return Built(_visits(tmp_path, "pending", works["pending"]), {"a": access}, works)


TO_PENDING = Scenario(
    "visit-list-to-pending",
    build_to_pending,
    lines={"a": Line(1, 1, 300, -150, D(-150), -30, D(-30), 150)},
    works={"kept": kept(1, 1, 150, 150, 30, 30), "pending": unpaid("pending")},
    usd_totals=(D(-150), D(-30)),
)


def _paid_world(world, *extra):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=20)
    access = world.access(opp, {unit: 2})
    works = _works(world, access, unit, "w1", "w2", "paid", "w4", "w5")
    world.settle(access)
    host.CompletedWork.objects.filter(pk=works["paid"].pk).update(payment_date=timezone.now())
    world.pay(access, D("450.00"))
    return Built(_over_cap(opp, *extra), {"a": access}, works)


# Paid 450 against a projected 300: 150 overpaid.
PAID_EXCLUDED = Scenario(
    "paid-work-left-alone-exposure",
    lambda world, tmp_path: _paid_world(world),
    lines={"a": Line(2, 2, 500, -200, D(-200), -40, D(-40), 300, D(450), D(150))},
    works={
        "w1": kept(1, 1, 100, 100, 20, 20),
        "w2": kept(1, 1, 100, 100, 20, 20),
        "paid": kept(1, 1, 100, 100, 20, 20),
        "w4": over_limit(),
        "w5": over_limit(),
    },
    usd_totals=(D(-200), D(-40)),
    exclusions={"paid": ["paid"]},
)

PAID_INCLUDED = Scenario(
    "paid-work-included-exposure",
    lambda world, tmp_path: _paid_world(world, "--include-paid"),
    lines={"a": Line(3, 3, 500, -300, D(-300), -60, D(-60), 200, D(450), D(250))},
    works={
        "w1": kept(1, 1, 100, 100, 20, 20),
        "w2": kept(1, 1, 100, 100, 20, 20),
        "paid": over_limit(),
        "w4": over_limit(),
        "w5": over_limit(),
    },
    usd_totals=(D(-300), D(-60)),
)


def build_suspended(world, tmp_path):
    opp = world.opportunity("KES", KES)
    unit = world.unit(opp, amount=1300, org_amount=250)
    suspended = world.access(opp, {unit: 1}, suspended=True)
    within = world.access(opp, {unit: 2})
    works = _works(world, suspended, unit, "s1", "s2", "s3")
    works.update(_works(world, within, unit, "ok1", "ok2"))
    world.settle(suspended, within)
    return Built(_over_cap(opp), {"suspended": suspended, "within": within}, works)


SUSPENDED = Scenario(
    "suspended-worker-corrected",
    build_suspended,
    lines={
        "suspended": Line(2, 2, 3900, -2600, D("-20.08"), -500, D("-3.86"), 1300, suspended=True)
    },
    works={
        "s1": kept(1, 1, 1300, "10.04", 250, "1.93"),
        "s2": over_limit(),
        "s3": over_limit(),
        "ok1": kept(1, 1, 1300, "10.04", 250, "1.93"),
        "ok2": kept(1, 1, 1300, "10.04", 250, "1.93"),
    },
    usd_totals=(D("-20.08"), D("-3.86")),
    untouched={"within": 2600},
)


def build_skip_suspended(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=20)
    worker = world.access(opp, {unit: 1})
    suspended = world.access(opp, {unit: 1}, suspended=True)
    works = _works(world, worker, unit, "w1", "w2")
    works.update(_works(world, suspended, unit, "s1", "s2", "s3"))
    world.settle(worker, suspended)
    return Built(
        _over_cap(opp, "--skip-suspended"), {"worker": worker, "suspended": suspended}, works
    )


SKIP_SUSPENDED = Scenario(
    "suspended-worker-skipped",
    build_skip_suspended,
    lines={"worker": Line(1, 1, 200, -100, D(-100), -20, D(-20), 100)},
    works={
        "w1": kept(1, 1, 100, 100, 20, 20),
        "w2": over_limit(),
        "s1": kept(1, 1, 100, 100, 20, 20),
        "s2": kept(1, 1, 100, 100, 20, 20),
        "s3": kept(1, 1, 100, 100, 20, 20),
    },
    usd_totals=(D(-100), D(-20)),
    untouched={"suspended": 300},
    exclusions={"suspended": ["s2", "s3"]},
)


def build_two_units(world, tmp_path):
    opp = world.opportunity()
    small = world.unit(opp, amount=100, org_amount=20)
    large = world.unit(opp, amount=250, org_amount=40)
    access = world.access(opp, {small: 1, large: 2})
    works = _works(world, access, small, "s1", "s2", "s3")
    works.update(_works(world, access, large, "l1", "l2", "l3"))
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


TWO_UNITS = Scenario(
    "two-units-two-caps",
    build_two_units,
    lines={"a": Line(3, 3, 1050, -450, D(-450), -80, D(-80), 600)},
    works={
        "s1": kept(1, 1, 100, 100, 20, 20),
        "s2": over_limit(),
        "s3": over_limit(),
        "l1": kept(1, 1, 250, 250, 40, 40),
        "l2": kept(1, 1, 250, 250, 40, 40),
        "l3": over_limit(),
    },
    usd_totals=(D(-450), D(-80)),
)


def build_duplicates(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=20)
    access = world.access(opp, {unit: 1})
    works = {
        "single": world.work(access, unit),
        "triple": world.work(access, unit, forms=unit.required * 3),
    }
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# Three visits of the one form earn three times; the flip takes all three back.
DUPLICATES = Scenario(
    "duplicate-submissions",
    build_duplicates,
    lines={"a": Line(1, 3, 400, -300, D(-300), -60, D(-60), 100)},
    works={"single": kept(1, 1, 100, 100, 20, 20), "triple": over_limit(completed=3)},
    usd_totals=(D(-300), D(-60)),
)


def build_two_workers(world, tmp_path):
    opp = world.opportunity()
    unit = world.unit(opp, amount=100, org_amount=20)
    accesses = {name: world.access(opp, {unit: 2}) for name in ("four", "three", "at-cap")}
    works = {}
    for name, n in (("four", 4), ("three", 3), ("at-cap", 2)):
        works.update(_works(world, accesses[name], unit, *(f"{name}-{i}" for i in range(1, n + 1))))
    world.settle(*accesses.values())
    return Built(_over_cap(opp), accesses, works)


TWO_WORKERS = Scenario(
    "two-workers-over-one-at-cap",
    build_two_workers,
    lines={
        "four": Line(2, 2, 400, -200, D(-200), -40, D(-40), 200),
        "three": Line(1, 1, 300, -100, D(-100), -20, D(-20), 200),
    },
    works={
        "four-1": kept(1, 1, 100, 100, 20, 20),
        "four-2": kept(1, 1, 100, 100, 20, 20),
        "four-3": over_limit(),
        "four-4": over_limit(),
        "three-1": kept(1, 1, 100, 100, 20, 20),
        "three-2": kept(1, 1, 100, 100, 20, 20),
        "three-3": over_limit(),
        "at-cap-1": kept(1, 1, 100, 100, 20, 20),
        "at-cap-2": kept(1, 1, 100, 100, 20, 20),
    },
    usd_totals=(D(-300), D(-60)),
    untouched={"at-cap": 200},
)


def build_org_only(world, tmp_path):
    opp = world.opportunity("KES", KES)
    unit = world.unit(opp, amount=0, org_amount=75)
    access = world.access(opp, {unit: 1})
    works = _works(world, access, unit, "w1", "w2")
    world.settle(access)
    return Built(_over_cap(opp), {"a": access}, works)


# The worker earns nothing per unit, the organisation 75: 75 / 129.5 = 0.579… → 0.58.
ORG_ONLY = Scenario(
    "organisation-pay-only",
    build_org_only,
    lines={"a": Line(1, 1, 0, 0, D(0), -75, D("-0.58"), 0)},
    works={"w1": kept(1, 1, 0, 0, 75, "0.58"), "w2": over_limit()},
    usd_totals=(D(0), D("-0.58")),
)


SCENARIOS = [
    USD_CAP, KES_RATE, TWO_MONTHS, OPTIONAL, PARENT_CHILD, TWO_CHILDREN, MANAGED, REAPPROVAL,
    REJECTED_PENDING, TO_REJECTED, TO_PENDING, PAID_EXCLUDED, PAID_INCLUDED, SUSPENDED,
    SKIP_SUSPENDED, TWO_UNITS, DUPLICATES, TWO_WORKERS, ORG_ONLY,
]  # fmt: skip


# -- reading what the ledger and the host produced -----------------------------------------------


def _line(report: dict) -> Line:
    return Line(
        works=report["works"],
        visits=report["visits"],
        accrual_now=report["accrual_now"],
        worker=report["worker_accrual_change"],
        worker_usd=D(report["worker_accrual_change_usd"]),
        org=report["org_accrual_change"],
        org_usd=D(report["org_accrual_change_usd"]),
        projected=report["projected_accrual"],
        paid=D(report["paid_to_date"]),
        exposure=D(report["overpayment_exposure"]),
        suspended=report["suspended"],
    )


def _saved(works: dict[str, object]) -> dict[str, Saved]:
    rows = {
        pk: Saved(*row)
        for pk, *row in host.CompletedWork.objects.filter(
            pk__in=[w.pk for w in works.values()]
        ).values_list(
            "pk", "status", "saved_completed_count", "saved_approved_count",
            "saved_payment_accrued", "saved_payment_accrued_usd", "saved_org_payment_accrued",
            "saved_org_payment_accrued_usd",
        )
    }  # fmt: skip
    return {label: rows[work.pk] for label, work in works.items()}


def _accruals(accesses: dict[str, object]) -> dict[str, int]:
    held = dict(
        host.OpportunityAccess.objects.filter(pk__in=[a.pk for a in accesses.values()]).values_list(
            "pk", "payment_accrued"
        )
    )
    return {label: held[access.pk] for label, access in accesses.items()}


def test_the_table_covers_what_it_promises():
    assert len(SCENARIOS) >= 15
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_money_table(world, corrections, apply, tmp_path, scenario):
    built = scenario.build(world, tmp_path)
    label_of = {access.pk: label for label, access in built.accesses.items()}

    planned = corrections("plan", *built.plan, "--reason", f"money table: {scenario.name}",
                          "--json")  # fmt: skip
    assert planned.code == 0, planned.err
    plan = planned.json
    assert {label_of[line["access_id"]]: _line(line) for line in plan["accesses"]} == (
        scenario.lines
    )
    totals = plan["totals"]
    assert (D(totals["worker_accrual_change_usd"]), D(totals["org_accrual_change_usd"])) == (
        scenario.usd_totals
    )
    label_of_work = {work.pk: label for label, work in built.works.items()}
    exclusions = {
        e["reason"]: sorted(label_of_work[pk] for pk in e["completed_work_ids"])
        for e in plan["exclusions"]
    }
    assert exclusions == {reason: sorted(ws) for reason, ws in scenario.exclusions.items()}

    applied = apply(plan, "--json")
    assert applied.code == 0, applied.err
    assert _saved(built.works) == scenario.works
    accruals = _accruals(built.accesses)
    expected = {label: line.projected for label, line in scenario.lines.items()}
    expected.update(scenario.untouched)
    assert accruals == expected
