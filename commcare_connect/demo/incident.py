"""The over-cap incident, rebuilt through the host's own form processor.

Rows are produced by :func:`process_deliver_unit` with the duplicate-flag bug switched on and the
opportunity's ``duplicate`` verification flag off, exactly the conditions of production: visits
past the cap come out approved/agree and the next recompute approves their completed work with
pay accrued. Building it by hand would only show what we think the bug did.

Every call adds a fresh organization, opportunities and workers (a random suffix keeps names
unique), so it can run again and again on one database; nothing is ever deleted.
"""

from __future__ import annotations

import datetime
import secrets
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import TextIO

from django.db import transaction
from django.db.models import Sum
from django.test.utils import override_settings
from django.utils import timezone

from commcare_connect.demo import host_rows
from commcare_connect.demo.situation import CapRow, over_cap_situation
from commcare_connect.form_receiver.processor import process_deliver_unit
from commcare_connect.opportunity.models import (
    CompletedWork,
    DeliverUnit,
    ExchangeRate,
    Opportunity,
    OpportunityAccess,
    OpportunityClaim,
    OpportunityClaimLimit,
    OpportunityVerificationFlags,
    Payment,
    PaymentInvoice,
    PaymentUnit,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.opportunity.visit_import import (
    get_exchange_rate,
    update_payment_accrued_for_user,
)
from commcare_connect.organization.models import Organization
from commcare_connect.users.models import User

__all__ = ["IncidentData", "build_incident", "over_cap_situation", "CapRow"]

CAP_A = 3
CAP_B = 2
KES_RATE = Decimal("129.5")
# Inside the bug's lifetime (2024-07 .. 2026-04-30): the incident's submissions.
SUBMISSIONS_START = datetime.datetime(2026, 3, 2, 8, 0, tzinfo=datetime.UTC)
# The one default ``date_created`` back-filled on old rows; works sharing it tie on the date.
SHARED_DEFAULT = datetime.datetime(2026, 3, 1, 0, 0, tzinfo=datetime.UTC)
# The processor compares the claim's end date with the real today: keep every claim open.
CLAIM_END = datetime.date(2099, 12, 31)
# One entity a day per worker, so the daily limit never applies.
MAX_DAILY = 5


@dataclass
class OpportunitySetup:
    opportunity: Opportunity
    payment_unit: PaymentUnit
    registration: DeliverUnit
    service: DeliverUnit
    cap: int


@dataclass
class IncidentData:
    """What :func:`build_incident` created, with the rows a correction should care about."""

    suffix: str
    organization: Organization
    opportunity_a: Opportunity
    opportunity_b: Opportunity
    payment_unit_a: PaymentUnit
    payment_unit_b: PaymentUnit
    cap_a: int
    cap_b: int
    # "w1".."w5": w1, w2 over the cap in A; w3 at the cap in A; w4 (suspended), w5 (paid) in B.
    accesses: dict[str, OpportunityAccess]
    # Per worker key, the completed work the bug approved past the cap (none for w3).
    over_cap_work_ids: dict[str, int] = field(default_factory=dict)
    trial_visit_id: int = 0
    invoice_id: int = 0
    worker_payment_id: int = 0

    @property
    def opportunity_ids(self) -> list[int]:
        return [self.opportunity_a.pk, self.opportunity_b.pk]

    @property
    def opportunity_uuids(self) -> list[uuid.UUID]:
        return [self.opportunity_a.opportunity_id, self.opportunity_b.opportunity_id]

    @property
    def suspended_access_id(self) -> int:
        return self.accesses["w4"].pk

    @property
    def paid_access_id(self) -> int:
        return self.accesses["w5"].pk

    @property
    def paid_over_cap_work_id(self) -> int:
        return self.over_cap_work_ids["w5"]

    @property
    def at_cap_access_id(self) -> int:
        return self.accesses["w3"].pk


def _opportunity(
    org: Organization, name: str, currency: str, amount: int, org_amount: int, cap: int, tag: str
) -> OpportunitySetup:
    opp = Opportunity.objects.create(
        organization=org,
        program=host_rows.program(org, f"{name} program", currency, budget=amount * 100),
        name=name,
        description=f"{name}: household visits",
        active=True,
        is_test=False,
        currency=host_rows.currency(currency),
        auto_approve_visits=True,
        auto_approve_payments=True,
        start_date=SUBMISSIONS_START.date() - datetime.timedelta(days=14),
        end_date=CLAIM_END,
        total_budget=amount * 100,
    )
    # ``duplicate`` off is what let the bug through.
    OpportunityVerificationFlags.objects.create(opportunity=opp, duplicate=False)
    pu = PaymentUnit.objects.create(
        opportunity=opp,
        name="Household visit",
        description="A registration and a service form per household",
        amount=amount,
        org_amount=org_amount,
        max_total=cap,
        max_daily=MAX_DAILY,
    )
    registration = DeliverUnit.objects.create(
        payment_unit=pu, slug=f"registration-{tag}", name="Household registration"
    )
    service = DeliverUnit.objects.create(
        payment_unit=pu, slug=f"service-{tag}", name="Household service"
    )
    return OpportunitySetup(opp, pu, registration, service, cap)


def _join(setup: OpportunitySetup, username: str) -> OpportunityAccess:
    user = User.objects.create(username=username, name=username.split("-")[0].title())
    access = OpportunityAccess.objects.create(
        user=user, opportunity=setup.opportunity, accepted=True
    )
    claim = OpportunityClaim.objects.create(opportunity_access=access, end_date=CLAIM_END)
    OpportunityClaimLimit.objects.create(
        opportunity_claim=claim, payment_unit=setup.payment_unit, max_visits=setup.cap
    )
    return access


def _submit_entities(
    setup: OpportunitySetup,
    access: OpportunityAccess,
    count: int,
    tag: str,
    received: list[datetime.datetime],
) -> list[str]:
    """Submit ``count`` entities (registration then service form each); return entity ids.

    ``received[i]`` is when entity ``i``'s forms arrived: it becomes the work's and visits'
    ``date_created``, so equal values reproduce the shared-default tie.
    """
    entity_ids = []
    for i in range(count):
        entity_id = f"{tag}-e{i + 1}"
        visit_date = SUBMISSIONS_START + datetime.timedelta(days=i, hours=1)
        for unit in (setup.registration, setup.service):
            process_deliver_unit(
                access,
                unit,
                xform_id=str(uuid.uuid4()),
                entity_id=entity_id,
                entity_name=f"Household {i + 1}",
                visit_date=visit_date,
                received_at=received[i],
            )
        entity_ids.append(entity_id)
    return entity_ids


def _received(count: int, day_offset: int) -> list[datetime.datetime]:
    return [
        SUBMISSIONS_START + datetime.timedelta(days=day_offset + i, hours=2) for i in range(count)
    ]


def _ensure_rates(currency: str, rate: Decimal, dates: list[datetime.date]) -> None:
    """Rates on the given dates; an existing rate for a date is kept (rates are shared).

    ``ON CONFLICT DO NOTHING`` rather than get-or-create: two seeds running at once then wait
    on each other's row instead of failing when the other rolls back.
    """
    ExchangeRate.objects.bulk_create(
        [ExchangeRate(currency_code=currency, rate_date=day, rate=rate) for day in dates],
        ignore_conflicts=True,
    )


def _work_id(access: OpportunityAccess, setup: OpportunitySetup, entity_id: str) -> int:
    return CompletedWork.objects.get(
        opportunity_access=access, payment_unit=setup.payment_unit, entity_id=entity_id
    ).pk


def _pay_and_invoice(
    setup: OpportunitySetup, access: OpportunityAccess, suffix: str
) -> tuple[int, int]:
    """Mark all of ``access``'s works paid and invoiced, as a payment run would have.

    Returns (invoice id, worker payment id). Must run after the accrual recompute so the
    amounts are the accrued ones.
    """
    paid_at = SUBMISSIONS_START + datetime.timedelta(days=20)
    works = CompletedWork.objects.filter(opportunity_access=access)
    sums = works.aggregate(pay=Sum("saved_payment_accrued"), org=Sum("saved_org_payment_accrued"))
    invoice = PaymentInvoice.objects.create(
        opportunity=setup.opportunity,
        amount=Decimal(sums["org"] or 0),
        date=paid_at.date(),
        invoice_number=f"INV-{suffix}-1",
        status="paid",
    )
    works.update(payment_date=paid_at, invoice=invoice)
    rate = get_exchange_rate(setup.opportunity.currency_code, paid_at.date())
    amount = Decimal(sums["pay"] or 0)
    payment = Payment.objects.create(
        opportunity_access=access,
        amount=amount,
        amount_usd=(amount / Decimal(rate)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
        date_paid=paid_at,
    )
    return invoice.pk, payment.pk


def _add_trial_visit(setup: OpportunitySetup, access: OpportunityAccess, work_id: int) -> int:
    """A trial visit on an over-cap work, written directly.

    The host's processor gives a trial visit (one submitted before the opportunity or its
    payment unit starts) no completed work at all; a trial visit sits on a work when a program
    manager's visit-status import sets an existing visit to ``trial`` (the import accepts any
    status and leaves the visit's work as it is). That is the case modelled here: it sits on an
    over-cap work because a correction must leave trial visits untouched while flipping their
    work.
    """
    work = CompletedWork.objects.get(pk=work_id)
    visit = UserVisit.objects.create(
        opportunity=setup.opportunity,
        user_id=access.user_id,
        opportunity_access=access,
        deliver_unit=setup.registration,
        entity_id=work.entity_id,
        entity_name=work.entity_name,
        xform_id=str(uuid.uuid4()),
        visit_date=work.date_created,
        form_json={},
        status=VisitValidationStatus.trial,
        review_status=VisitReviewStatus.pending,
        completed_work=work,
        status_modified_date=work.date_created,
    )
    UserVisit.objects.filter(pk=visit.pk).update(date_created=work.date_created)
    return visit.pk


@transaction.atomic
def build_incident(stdout: TextIO | None = None) -> IncidentData:
    """Create the incident's two opportunities through the processor and return what was made.

    Opportunity A (USD, cap 3): w1 and w2 each one work over the cap (w2's works all share one
    ``date_created``), w3 exactly at the cap. Opportunity B (KES, cap 2): w4 one over and
    suspended afterwards, w5 one over with every work already paid and invoiced.
    """
    suffix = secrets.token_hex(3)
    org = Organization.objects.create(name=f"Incident NGO {suffix}")
    a = _opportunity(org, f"Incident A {suffix}", "USD", 500, 100, CAP_A, f"a-{suffix}")
    b = _opportunity(org, f"Incident B {suffix}", "KES", 6500, 1300, CAP_B, f"b-{suffix}")
    today = timezone.now().date()
    _ensure_rates(
        "KES", KES_RATE, sorted({SUBMISSIONS_START.date() - datetime.timedelta(1), today})
    )

    accesses = {
        "w1": _join(a, f"amina-{suffix}"),
        "w2": _join(a, f"bakari-{suffix}"),
        "w3": _join(a, f"chausiku-{suffix}"),
        "w4": _join(b, f"daudi-{suffix}"),
        "w5": _join(b, f"eshe-{suffix}"),
    }

    # w1: the cap-th and the over-cap work arrive at the same instant (a tie on the boundary).
    w1_received = _received(CAP_A + 1, 0)
    w1_received[CAP_A] = w1_received[CAP_A - 1]
    # w2: every work carries the shared back-filled default.
    w2_received = [SHARED_DEFAULT] * (CAP_A + 1)
    plan = [
        ("w1", a, CAP_A + 1, w1_received),
        ("w2", a, CAP_A + 1, w2_received),
        ("w3", a, CAP_A, _received(CAP_A, 1)),
        ("w4", b, CAP_B + 1, _received(CAP_B + 1, 2)),
        ("w5", b, CAP_B + 1, _received(CAP_B + 1, 3)),
    ]
    over_cap: dict[str, int] = {}
    with override_settings(CCC_REPRODUCE_DUPLICATE_FLAG_BUG=True):
        for key, setup, count, received in plan:
            access = accesses[key]
            entities = _submit_entities(setup, access, count, f"{key}-{suffix}", received)
            if count > setup.cap:
                over_cap[key] = _work_id(access, setup, entities[setup.cap])

    trial_visit_id = _add_trial_visit(a, accesses["w1"], over_cap["w1"])
    OpportunityAccess.objects.filter(pk=accesses["w4"].pk).update(
        suspended=True,
        suspension_date=SUBMISSIONS_START + datetime.timedelta(days=10),
        suspension_reason="Submissions past the claim limit",
    )
    for access in accesses.values():
        access.refresh_from_db()
        update_payment_accrued_for_user(access, incremental=False)
    invoice_id, payment_id = _pay_and_invoice(b, accesses["w5"], suffix)

    data = IncidentData(
        suffix=suffix,
        organization=org,
        opportunity_a=a.opportunity,
        opportunity_b=b.opportunity,
        payment_unit_a=a.payment_unit,
        payment_unit_b=b.payment_unit,
        cap_a=CAP_A,
        cap_b=CAP_B,
        accesses=accesses,
        over_cap_work_ids=over_cap,
        trial_visit_id=trial_visit_id,
        invoice_id=invoice_id,
        worker_payment_id=payment_id,
    )
    if stdout is not None:
        describe(data, stdout)
    return data


def describe(data: IncidentData, stdout: TextIO) -> None:
    """Per opportunity, then per access: worker, suspended, works, over-cap works, accrual."""
    rows = {row.access_id: row for row in over_cap_situation(data.opportunity_ids)}
    for opp in (data.opportunity_a, data.opportunity_b):
        stdout.write(f"{opp.name}  uuid={opp.opportunity_id}  currency={opp.currency_code}\n")
        for key, access in data.accesses.items():
            if access.opportunity_id != opp.pk:
                continue
            row = rows[access.pk]
            works = CompletedWork.objects.filter(opportunity_access=access).count()
            suspended = "yes" if access.suspended else "no"
            stdout.write(
                f"  {key} {access.user.username:<20} suspended={suspended:<3} works={works}"
                f" over_cap={row.over_cap} payment_accrued={access.payment_accrued}\n"
            )
