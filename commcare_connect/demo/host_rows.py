"""Rows every opportunity needs in the host before it can exist: a currency, a program.

The host loads the ISO currency and country tables in a migration; this stand-in creates the
currencies it uses on demand. An opportunity's ``program`` is NOT NULL in the host, and a
program needs a delivery type.
"""

from __future__ import annotations

import datetime

from commcare_connect.opportunity.models import Currency, DeliveryType
from commcare_connect.organization.models import Organization
from commcare_connect.program.models import Program

CURRENCY_NAMES = {
    "USD": "US Dollar",
    "KES": "Kenyan Shilling",
    "INR": "Indian Rupee",
    "NGN": "Naira",
    "XTS": "Codes specifically reserved for testing purposes",
}
PROGRAM_START = datetime.date(2024, 1, 1)
PROGRAM_END = datetime.date(2099, 12, 31)


def currency(code: str | None) -> Currency | None:
    """The ``Currency`` row of an ISO code (created when missing); None for None."""
    if code is None:
        return None
    row, _ = Currency.objects.get_or_create(
        code=code, defaults={"name": CURRENCY_NAMES.get(code, code)}
    )
    return row


def delivery_type() -> DeliveryType:
    row = DeliveryType.objects.filter(slug="household-visits").order_by("id").first()
    if row is None:
        row = DeliveryType.objects.create(
            name="Household visits", slug="household-visits", description="Household visits"
        )
    return row


def program(
    organization: Organization, name: str, code: str | None = "USD", budget: int = 1_000_000
) -> Program:
    """A program of ``organization`` (its slug is made from ``name`` by ``Program.save``)."""
    return Program.objects.create(
        name=name,
        description=f"{name} (stand-in program)",
        delivery_type=delivery_type(),
        budget=budget,
        currency=currency(code),
        start_date=PROGRAM_START,
        end_date=PROGRAM_END,
        organization=organization,
    )
