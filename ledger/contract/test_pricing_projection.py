"""The projected pricing equals the host's own recompute, access by access and work by work.

A random world — opportunities with and without auto-approval, managed or not, in several
currencies with rates changing across dates; payment-unit trees (children, grandchildren, units
without deliver units, with optional ones); works of every status, some without visits, some
with a null entity, paid ones, stale saved figures; visits of every status and review status,
some on another unit's deliver unit — then random flips of works with their visits and of lone
visits, to every status, some restoring a date of their own as an undo does. The projection
(:mod:`ledger.accrual_rules`) is compared with the host's ``update_status`` run over each
access in a rolled-back transaction (:mod:`ledger.pricing_exact`, the ``plan --exact`` path):
every work's status and saved figures, every access's accrual and pay sums, and the planned
works the recompute would not keep.

Data is created set-based (``bulk_create``) so a thousand accesses build in seconds. The seed
is random unless ``LEDGER_PRICING_SEED`` is set, and is printed with any failure:
``LEDGER_PRICING_SEED=N pytest --pyargs ledger.contract -k projection`` replays it.
"""

from __future__ import annotations

import datetime
import itertools
import os
import random
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from model_bakery import baker

from ledger import accrual_rules, host, pricing, pricing_exact
from ledger.planners.rows import PlannedRow
from ledger.sql import db_now, read_only_snapshot

ACCESSES = int(os.environ.get("LEDGER_PRICING_ACCESSES", "1000"))
CODES = ["USD", "KES", "NGN", "XOF", "INR"]
# Rates chosen to make quotients end on half a cent (1/8, 1/16, 1/0.8 …) as well as long ones.
RATES = ["8", "16", "0.8", "1.6", "3.2", "6.25", "129.5", "131.25", "3.333333", "1234.567891",
         "0.987654", "412.5", "25"]  # fmt: skip
FIRST_RATE_DAY = datetime.date(2023, 6, 1)
WORK_STATUSES = ["approved", "approved", "pending", "rejected", "over_limit", "incomplete"]
VISIT_STATUSES = ["approved"] * 5 + ["pending", "rejected", "over_limit", "duplicate", "trial"]
REVIEW_STATUSES = ["agree"] * 3 + ["pending", "disagree"]
FLIP_TO = ["over_limit"] * 4 + ["approved", "pending", "rejected", "incomplete"]
VISIT_FOR_WORK = {"over_limit": "over_limit", "approved": "approved", "pending": "pending",
                  "rejected": "rejected", "incomplete": "pending"}  # fmt: skip


class RandomWorld:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = itertools.count(1)
        self.tag = uuid.uuid4().hex[:8]

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self.tag}-{next(self.n)}"

    def _day(self) -> datetime.datetime:
        start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        return start + datetime.timedelta(minutes=self.rng.randrange(0, 60 * 24 * 800))

    def currencies(self) -> None:
        today = datetime.date.today()
        rates = []
        for code in CODES:
            host.Currency.objects.get_or_create(code=code, defaults={"name": code})
            if code == "USD":
                continue
            days = {FIRST_RATE_DAY}
            days |= {FIRST_RATE_DAY + datetime.timedelta(days=self.rng.randrange(1, 1000))
                     for _ in range(12)}  # fmt: skip
            for day in sorted(d for d in days if d <= today):
                rates.append(
                    host.ExchangeRate(
                        currency_code=code, rate_date=day, rate=Decimal(self.rng.choice(RATES))
                    )
                )
        host.ExchangeRate.objects.bulk_create(rates, ignore_conflicts=True)

    def opportunities(self, count: int) -> list:
        return [
            baker.make(
                host.Opportunity,
                currency_id=self.rng.choice(CODES),
                auto_approve_visits=True,
                auto_approve_payments=self.rng.random() < 0.75,
                managed=self.rng.random() < 0.3,
                active=True,
                is_test=False,
            )
            for _ in range(count)
        ]

    def units(self, opportunity) -> list:
        """A payment-unit forest of 1-5 units, up to three deep, with 0-3 required and 0-2
        optional deliver units each; returns [(payment unit, [deliver units])]."""
        rng = self.rng
        units = []
        for _ in range(rng.randint(1, 5)):
            parent = rng.choice(units)[0] if units and rng.random() < 0.45 else None
            pu = host.PaymentUnit.objects.create(
                opportunity=opportunity,
                amount=rng.choice([1, 7, 50, 100, 125, 333, 1000, 2500]),
                org_amount=rng.choice([0, 0, 5, 20, 75, 333]),
                name=self._id("unit"),
                description="",
                max_total=1000,
                max_daily=1000,
                parent_payment_unit=parent,
            )
            units.append((pu, []))
        first = None
        for pu, forms in units:
            shape = [False] * rng.choice([0, 1, 1, 2, 2, 3]) + [True] * rng.choice([0, 0, 1, 2])
            for optional in shape:
                if first is None:
                    first = baker.make(
                        host.DeliverUnit, payment_unit=pu, optional=optional, slug=self._id("du")
                    )
                    forms.append(first)
                else:
                    forms.append(
                        host.DeliverUnit(
                            app=first.app,
                            slug=self._id("du"),
                            name="form",
                            payment_unit=pu,
                            optional=optional,
                        )  # fmt: skip
                    )
        host.DeliverUnit.objects.bulk_create([f for _, forms in units for f in forms if not f.pk])
        return units

    def users(self, count: int) -> list:
        User = get_user_model()
        users = baker.prepare(User, _quantity=count)
        for user in users:
            setattr(user, User.USERNAME_FIELD, self._id("worker"))
        return User.objects.bulk_create(users)

    def build(self, accesses: int) -> list:
        rng = self.rng
        self.currencies()
        opportunities = self.opportunities(max(4, accesses // 60))
        units = {o.pk: self.units(o) for o in opportunities}
        per_opportunity = -(-accesses // len(opportunities))
        users = self.users(per_opportunity)
        access_rows = []
        for i in range(accesses):
            opportunity = opportunities[i % len(opportunities)]
            access_rows.append(
                host.OpportunityAccess(
                    opportunity=opportunity,
                    user=users[i // len(opportunities)],
                    accepted=True,
                    suspended=rng.random() < 0.05,
                    payment_accrued=rng.randrange(0, 20000),
                )
            )
        access_rows = host.OpportunityAccess.objects.bulk_create(access_rows)

        works = []
        for access in access_rows:
            tree = units[access.opportunity_id]
            entities = [self._id("entity") for _ in range(rng.randint(1, 3))] + [None]
            before = len(works)
            for entity in entities:
                for pu, _ in tree:
                    if rng.random() < (0.6 if entity else 0.2):
                        works.append(self._work(access, pu, entity))
            if len(works) == before:
                works.append(self._work(access, tree[0][0], self._id("entity")))
        works = host.CompletedWork.objects.bulk_create(works)

        visits = []
        forms_of = {pu.pk: forms for tree in units.values() for pu, forms in tree}
        all_forms = {o: [f for _, forms in tree for f in forms] for o, tree in units.items()}
        for work in works:
            own = forms_of[work.payment_unit_id]
            others = all_forms[work.opportunity_access.opportunity_id]
            for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
                pool = own if own and rng.random() < 0.9 else others
                if not pool:
                    continue
                visits.append(self._visit(work, rng.choice(pool)))
        host.UserVisit.objects.bulk_create(visits, batch_size=2000)
        return access_rows

    def _work(self, access, pu, entity):
        rng = self.rng
        saved_c = rng.randrange(0, 4)
        pay = rng.choice([0, 0, pu.amount * saved_c])
        return host.CompletedWork(
            opportunity_access=access,
            payment_unit=pu,
            entity_id=entity,
            status=rng.choice(WORK_STATUSES),
            status_modified_date=None if rng.random() < 0.05 else self._day(),
            payment_date=self._day() if rng.random() < 0.1 else None,
            saved_completed_count=saved_c,
            saved_approved_count=rng.randrange(0, saved_c + 1),
            saved_payment_accrued=pay,
            saved_payment_accrued_usd=Decimal(rng.randrange(0, 100000)) / 100,
            saved_org_payment_accrued=rng.choice([0, pu.org_amount * saved_c]),
            saved_org_payment_accrued_usd=Decimal(rng.randrange(0, 10000)) / 100,
        )

    def _visit(self, work, form):
        rng = self.rng
        access = work.opportunity_access
        status = rng.choice(VISIT_STATUSES)
        return host.UserVisit(
            opportunity_id=access.opportunity_id,
            user_id=access.user_id,
            opportunity_access=access,
            deliver_unit=form,
            completed_work=work,
            entity_id=work.entity_id,
            xform_id=self._id("x"),
            visit_date=self._day(),
            status=status,
            status_modified_date=self._day(),
            review_status=rng.choice(REVIEW_STATUSES),
            reason=rng.choice([None, "", "blurred photo", "wrong child"]) if status == "rejected"
            else None,
            flagged=False,
            form_json={},
        )  # fmt: skip


def _flips(rng: random.Random, accesses: list) -> list[PlannedRow]:
    """Random planned flips: works with all their visits, and lone visits; every access has
    at least one."""
    ids = [a.pk for a in accesses]
    works = list(
        host.CompletedWork.objects.filter(opportunity_access_id__in=ids)
        .order_by("id")
        .values_list("pk", "opportunity_access_id", "status")
    )
    visits: dict[int, list] = {}
    for row in (
        host.UserVisit.objects.filter(completed_work__opportunity_access_id__in=ids)
        .order_by("id")
        .values_list("pk", "completed_work_id", "status", "xform_id")
    ):
        visits.setdefault(row[1], []).append(row)
    opportunity_of = {a.pk: a.opportunity_id for a in accesses}
    rows: list[PlannedRow] = []
    flipped_access: set[int] = set()
    for work_id, access_id, status in works:
        opp = opportunity_of[access_id]
        chance = rng.random()
        if chance < 0.35:
            to = rng.choice([s for s in FLIP_TO if s != status] or ["pending"])
            rows.append(PlannedRow("completed_work", work_id, work_id, opp, access_id, None,
                                   status, to, "", False))  # fmt: skip
            for pk, _, visit_status, xform in visits.get(work_id, ()):
                visit_to = VISIT_FOR_WORK[to]
                if visit_to != visit_status:
                    rows.append(PlannedRow("visit", pk, work_id, opp, access_id, xform,
                                           visit_status, visit_to, "", False))  # fmt: skip
            flipped_access.add(access_id)
        elif chance < 0.5 and visits.get(work_id):
            pk, _, visit_status, xform = rng.choice(visits[work_id])
            to = rng.choice([s for s in ("approved", "rejected", "pending", "over_limit")
                             if s != visit_status])  # fmt: skip
            rows.append(PlannedRow("visit", pk, work_id, opp, access_id, xform, visit_status,
                                   to, "", False))  # fmt: skip
            flipped_access.add(access_id)
    for work_id, access_id, status in works:
        if access_id not in flipped_access:
            to = "over_limit" if status != "over_limit" else "approved"
            rows.append(PlannedRow("completed_work", work_id, work_id, opportunity_of[access_id],
                                   access_id, None, status, to, "", False))  # fmt: skip
            flipped_access.add(access_id)
    return rows


def _differences(projected: dict, hosted: dict) -> list[str]:
    found = []
    for pk in sorted(set(projected) | set(hosted)):
        mine, theirs = projected.get(pk), hosted.get(pk)
        if (
            mine is None
            or theirs is None
            or mine.status != theirs.status
            or tuple(mine.figures) != tuple(theirs.figures)
        ):
            found.append(f"work {pk}: projected {mine}, host {theirs}")
    return found


def test_the_projection_equals_the_hosts_recompute_on_random_accesses(transactional_db):
    seed = int(os.environ.get("LEDGER_PRICING_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"LEDGER_PRICING_SEED={seed}")
    accesses = RandomWorld(rng).build(ACCESSES)
    rows = _flips(rng, accesses)
    access_ids = sorted({r.access_id for r in rows})
    assert len(access_ids) >= ACCESSES
    # As an undo does, some flips restore a date of their own (or none) instead of the apply's.
    world_day = RandomWorld(rng)._day
    stamps = {
        (r.entity_kind, r.entity_id): None if rng.random() < 0.1 else world_day()
        for r in rows
        if rng.random() < 0.25
    }

    with read_only_snapshot():
        projection = accrual_rules.project(
            rows, access_ids, now=db_now(), stamps=stamps, keep_works=True
        )
    hosted: dict = {}
    sums, unstable = pricing_exact.simulate(rows, access_ids, stamps=stamps, works=hosted)

    differences = _differences(projection.works, hosted)
    assert not differences, (
        f"seed {seed}: {len(differences)} works differ from the host's recompute, e.g.\n"
        + "\n".join(differences[:15])
    )
    for access_id in access_ids:
        assert projection.sums[access_id] == sums[access_id], (
            f"seed {seed}: access {access_id}: projected {projection.sums[access_id]}, "
            f"host {sums[access_id]}"
        )
    assert projection.unstable == unstable, f"seed {seed}"
    # Every kind of case was met, so the comparison covered them.
    statuses = {w.status for w in hosted.values()}
    assert {"approved", "rejected", "over_limit", "pending"} <= statuses, f"seed {seed}"
    assert unstable, f"seed {seed}: no planned work the host would move; the test is too tame"

    # price() reports the same per access, and what the access's accrual becomes.
    priced = pricing.price(rows, stamps=stamps)
    for access_id, p in priced.prices.items():
        s = sums[access_id]
        assert (p.works_accrued_now, p.projected_accrual) == (s.pay_now, s.pay_after), seed
        assert (p.worker_change_usd, p.org_change, p.org_change_usd) == (
            s.usd_after - s.usd_now, s.org_after - s.org_now, s.org_usd_after - s.org_usd_now,
        ), seed  # fmt: skip
    assert priced.unstable == unstable, f"seed {seed}"


@pytest.mark.parametrize("code", ["KES", None])
def test_a_rate_the_host_would_have_to_fetch_is_refused(world, code):
    """No stored rate on or before a day an approved work is priced at, or no currency: the
    host would fetch over the network, or fail; the projection refuses, naming it."""
    from ledger.errors import LedgerError

    opp = world.opportunity("USD")
    if code:
        host.Currency.objects.get_or_create(code=code, defaults={"name": code})
    host.Opportunity.objects.filter(pk=opp.pk).update(currency_id=code)
    host.ExchangeRate.objects.filter(currency_code="KES").delete()
    unit = world.unit(opp)
    access = world.access(opp, {unit: 5})
    work = world.work(access, unit)
    host.CompletedWork.objects.filter(pk=work.pk).update(status="pending")
    row = PlannedRow("completed_work", work.pk, work.pk, opp.pk, access.pk, None, "pending",
                     "approved", "", False)  # fmt: skip
    with pytest.raises(LedgerError, match="external rates service" if code else "currency"):
        pricing.price([row])
