"""Fixtures of the contract suite: host rows built with model_bakery, settled by the host."""

from __future__ import annotations

import datetime
import itertools
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from model_bakery import baker

from ledger import host

PAST = datetime.datetime(2026, 1, 5, 8, 30, tzinfo=datetime.UTC)
RATE_DATE = datetime.date(2025, 1, 1)


@dataclass(eq=False)
class Unit:
    payment_unit: object
    required: list = field(default_factory=list)
    optional: list = field(default_factory=list)


class World:
    """Builds the host rows a correction needs; every figure comes from the host's own code."""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def _tag(self) -> str:
        return f"contract-{uuid.uuid4().hex[:8]}-{next(self._n)}"

    def currency(self, code: str, rate: Decimal | None = None):
        currency, _ = host.Currency.objects.get_or_create(code=code, defaults={"name": code})
        if rate is not None:
            host.ExchangeRate.objects.get_or_create(
                currency_code=code, rate_date=RATE_DATE, defaults={"rate": rate}
            )
        return currency

    def rate(self, code: str, day: datetime.date, rate: Decimal) -> None:
        """Store the host's exchange rate of ``code`` from ``day`` on (until a later one)."""
        self.currency(code)
        host.ExchangeRate.objects.create(currency_code=code, rate_date=day, rate=rate)

    def opportunity(self, code: str = "USD", rate: Decimal | None = None, *, managed=False):
        return baker.make(
            host.Opportunity,
            currency=self.currency(code, rate),
            auto_approve_visits=True,
            auto_approve_payments=True,
            managed=managed,
            active=True,
            is_test=False,
        )

    def unit(
        self,
        opportunity,
        *,
        amount: int = 100,
        org_amount: int = 20,
        forms: int = 1,
        optional: int = 0,
        parent: Unit | None = None,
    ):
        """A payment unit with ``forms`` required and ``optional`` optional deliver units."""
        pu = baker.make(
            host.PaymentUnit,
            opportunity=opportunity,
            amount=amount,
            org_amount=org_amount,
            max_total=1000,
            max_daily=1000,
            parent_payment_unit=parent.payment_unit if parent else None,
            start_date=None,
            end_date=None,
        )
        unit = Unit(pu)
        for _ in range(forms):
            unit.required.append(
                baker.make(host.DeliverUnit, payment_unit=pu, optional=False, slug=self._tag())
            )
        for _ in range(optional):
            unit.optional.append(
                baker.make(host.DeliverUnit, payment_unit=pu, optional=True, slug=self._tag())
            )
        return unit

    def access(self, opportunity, caps: dict[Unit, int], *, suspended: bool = False):
        access = baker.make(
            host.OpportunityAccess,
            opportunity=opportunity,
            suspended=suspended,
            accepted=True,
            payment_accrued=0,
        )
        claim = baker.make(
            host.OpportunityClaim,
            opportunity_access=access,
            end_date=datetime.date(2030, 1, 1),
        )
        for unit, cap in caps.items():
            baker.make(
                host.OpportunityClaimLimit,
                opportunity_claim=claim,
                payment_unit=unit.payment_unit,
                max_visits=cap,
                end_date=None,
            )
        return access

    def work(
        self,
        access,
        unit: Unit,
        *,
        visit_status: str = "approved",
        review_status: str = "agree",
        forms: list | None = None,
        status: str = "approved",
        modified: datetime.datetime = PAST,
        entity: str | None = None,
        **fields,
    ):
        """A completed work with one visit per form (a form listed twice: two visits); its
        figures are set by :meth:`settle`. Works of parent and child units share ``entity``."""
        work = baker.make(
            host.CompletedWork,
            opportunity_access=access,
            payment_unit=unit.payment_unit,
            entity_id=entity or self._tag(),
            status=status,
            status_modified_date=modified,
            payment_date=None,
            invoice=None,
            **fields,
        )
        for form in unit.required if forms is None else forms:
            self.visit(work, form, status=visit_status, review_status=review_status)
        return work

    def visit(self, work, form, *, status: str = "approved", review_status: str = "agree"):
        access = work.opportunity_access
        return baker.make(
            host.UserVisit,
            opportunity=access.opportunity,
            user=access.user,
            opportunity_access=access,
            deliver_unit=form,
            completed_work=work,
            entity_id=work.entity_id,
            xform_id=self._tag(),
            status=status,
            review_status=review_status,
            visit_date=PAST,
            status_modified_date=PAST,
            flagged=False,
            form_json={},
        )

    def pay(self, access, amount: Decimal):
        """A payment to the worker of ``access`` (what the plan calls paid to date)."""
        return baker.make(
            host.Payment,
            opportunity_access=access,
            amount=amount,
            amount_usd=None,
            date_paid=PAST,
            payment_unit=None,
            organization=None,
            invoice=None,
        )

    def settle(self, *accesses) -> None:
        """Let the host's own recompute set every saved figure and accrual."""
        for access in accesses:
            host.recompute_access(access.pk)
            access.refresh_from_db()


PLANNER = "contract-planner"
REVIEWER = "contract-reviewer"


@pytest.fixture(autouse=True)
def _flushable(request):
    """The suite's tests are transactional: the test settings must install ledger.flushable,
    or the database's refusal to truncate the ledger's tables fails every test's teardown."""
    from django.apps import apps

    if not apps.is_installed("ledger.flushable"):
        pytest.fail(
            "the contract suite flushes the test database after each test: add "
            "'ledger.flushable' to INSTALLED_APPS in the test settings (docs/api.md)",
            pytrace=False,
        )


@pytest.fixture
def world(transactional_db) -> World:
    return World()


@pytest.fixture
def people(transactional_db):
    """Two people, as the ledger requires: one plans and applies, another approves."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    for username in (PLANNER, REVIEWER):
        baker.make(
            User,
            **{User.USERNAME_FIELD: username},
            is_active=True,
            is_superuser=True,
            is_staff=True,
        )
    return PLANNER, REVIEWER


@pytest.fixture
def corrections(people):
    """``./manage.py corrections …`` in-process; plan/apply/undo act as the planner."""
    from ledger.testing import run_corrections

    acting = {"plan", "apply", "undo", "discard"}

    def run(*args: str):
        if args and args[0] in acting and "--operator" not in args:
            args = (*args, "--operator", PLANNER)
        return run_corrections(*args)

    return run


@pytest.fixture
def apply(corrections):
    """Approve a plan as the reviewer (four eyes), then apply it as the planner."""

    def run(plan: dict, *extra: str):
        approved = corrections(
            "approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
            "--operator", REVIEWER,
        )  # fmt: skip
        assert approved.code == 0, approved.err
        return corrections("apply", "--batch", plan["batch"], *extra)

    return run


@pytest.fixture
def undo(corrections, apply):
    """Undo a batch as the host's approval setting asks: planned and priced, approved by the
    reviewer and applied by the planner — or in one step where approval is off."""
    from ledger import conf

    def run(batch: str, reason: str, *extra: str):
        if not conf.get("REQUIRE_APPROVAL"):
            return corrections("undo", "--batch", batch, "--reason", reason, *extra)
        planned = corrections("plan", "undo", "--batch", batch, "--reason", reason, "--json")
        assert planned.code == 0, planned.err
        return apply(planned.json, *extra)

    return run
