"""Shared fixtures: a small factory for host rows, and a second raw database connection.

The factory writes rows the way the host would hold them (an opportunity with its verification
flags, payment units with their deliver units, accesses with a claim and claim limits), so a
test states only what it is about: how many forms, which are optional, the cap, the visits.
"""

from __future__ import annotations

import datetime
import itertools
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pytest
from django.db import connection
from django.test.utils import override_settings

from commcare_connect.demo import host_rows
from commcare_connect.form_receiver.processor import process_deliver_unit
from commcare_connect.opportunity.models import (
    CompletedWork,
    CompletedWorkStatus,
    DeliverUnit,
    Opportunity,
    OpportunityAccess,
    OpportunityClaim,
    OpportunityClaimLimit,
    OpportunityVerificationFlags,
    PaymentUnit,
    UserVisit,
    VisitReviewStatus,
    VisitValidationStatus,
)
from commcare_connect.organization.models import Organization
from commcare_connect.users.models import User
from tests.pytest_skips import skip_unprovided

T0 = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC)
# The processor compares claim end dates with the real today: claims stay open by default.
CLAIM_END = datetime.date(2099, 12, 31)


@dataclass(eq=False)  # hashable by identity, so it can key a dict of caps
class Unit:
    """A payment unit and its deliver units, required ones first."""

    payment_unit: PaymentUnit
    required: list[DeliverUnit] = field(default_factory=list)
    optional: list[DeliverUnit] = field(default_factory=list)

    @property
    def pk(self) -> int:
        return self.payment_unit.pk

    @property
    def forms(self) -> list[DeliverUnit]:
        return self.required + self.optional


class HostFactory:
    """Builds host rows with unique names; every method returns saved model instances."""

    def __init__(self) -> None:
        self._n = itertools.count(1)
        self._token = uuid.uuid4().hex[:6]

    def _next(self) -> str:
        return f"{self._token}-{next(self._n)}"

    def organization(self) -> Organization:
        return Organization.objects.create(name=f"Org {self._next()}")

    def opportunity(
        self, *, currency: str | None = "USD", duplicate_flag: bool = False, **fields
    ) -> Opportunity:
        """An opportunity (with its program and verification flags) in ``currency``.

        ``currency`` is an ISO code, its ``Currency`` row created when missing, or None.
        """
        fields.setdefault("organization", self.organization())
        fields.setdefault("name", f"Opportunity {self._next()}")
        fields.setdefault("description", "")
        fields.setdefault("is_test", False)
        fields.setdefault(
            "program", host_rows.program(fields["organization"], f"Program {self._next()}")
        )
        opp = Opportunity.objects.create(currency=host_rows.currency(currency), **fields)
        OpportunityVerificationFlags.objects.create(opportunity=opp, duplicate=duplicate_flag)
        return opp

    def unit(
        self,
        opportunity: Opportunity,
        *,
        amount: int = 100,
        org_amount: int = 20,
        required: int = 1,
        optional: int = 0,
        parent: Unit | None = None,
        **fields,
    ) -> Unit:
        fields.setdefault("description", "")
        fields.setdefault("max_total", 100)
        fields.setdefault("max_daily", 100)
        pu = PaymentUnit.objects.create(
            opportunity=opportunity,
            name=fields.pop("name", f"Unit {self._next()}"),
            amount=amount,
            org_amount=org_amount,
            parent_payment_unit=parent.payment_unit if parent else None,
            **fields,
        )
        unit = Unit(pu)
        for i in range(required + optional):
            du = DeliverUnit.objects.create(
                payment_unit=pu,
                slug=f"form-{self._next()}",
                name=f"Form {i + 1}",
                optional=i >= required,
            )
            (unit.optional if du.optional else unit.required).append(du)
        return unit

    def access(
        self,
        opportunity: Opportunity,
        *,
        caps: dict[Unit, int] | None = None,
        suspended: bool = False,
        user: User | None = None,
        claim_end: datetime.date = CLAIM_END,
    ) -> OpportunityAccess:
        """A worker's access; ``caps`` maps units to ``max_visits`` of its claim limits."""
        user = user or User.objects.create(username=f"worker-{self._next()}")
        access = OpportunityAccess.objects.create(
            user=user, opportunity=opportunity, accepted=True, suspended=suspended
        )
        if caps:
            claim = OpportunityClaim.objects.create(opportunity_access=access, end_date=claim_end)
            for unit, cap in caps.items():
                OpportunityClaimLimit.objects.create(
                    opportunity_claim=claim, payment_unit=unit.payment_unit, max_visits=cap
                )
        return access

    def work(
        self,
        access: OpportunityAccess,
        unit: Unit,
        *,
        entity_id: str | None = None,
        status: str = CompletedWorkStatus.incomplete,
        visits: Iterable[DeliverUnit] = (),
        visit_status: str = VisitValidationStatus.approved,
        review_status: str = VisitReviewStatus.agree,
        **fields,
    ) -> CompletedWork:
        """A completed work with one visit per form in ``visits`` (all of the same status).

        ``date_created`` (auto_now_add in the host) may be given; it is written after the insert.
        """
        date_created = fields.pop("date_created", None)
        work = CompletedWork.objects.create(
            opportunity_access=access,
            payment_unit=unit.payment_unit,
            entity_id=entity_id or f"entity-{self._next()}",
            status=status,
            **fields,
        )
        if date_created is not None:
            CompletedWork.objects.filter(pk=work.pk).update(date_created=date_created)
            work.date_created = date_created
        for du in visits:
            self.visit(work, du, status=visit_status, review_status=review_status)
        return work

    def visit(
        self,
        work: CompletedWork,
        deliver_unit: DeliverUnit,
        *,
        status: str = VisitValidationStatus.approved,
        review_status: str = VisitReviewStatus.agree,
        **fields,
    ) -> UserVisit:
        access = work.opportunity_access
        fields.setdefault("visit_date", T0)
        fields.setdefault("status_modified_date", T0)
        fields.setdefault("form_json", {})
        date_created = fields.pop("date_created", None)
        visit = UserVisit.objects.create(
            opportunity_id=access.opportunity_id,
            user_id=access.user_id,
            opportunity_access=access,
            deliver_unit=deliver_unit,
            entity_id=work.entity_id,
            xform_id=str(uuid.uuid4()),
            status=status,
            review_status=review_status,
            completed_work=work,
            **fields,
        )
        if date_created is not None:
            UserVisit.objects.filter(pk=visit.pk).update(date_created=date_created)
            visit.date_created = date_created
        return visit

    def approved_work(self, access: OpportunityAccess, unit: Unit, **fields) -> CompletedWork:
        """A work with an approved, agreed visit for every required and the first optional form."""
        return self.work(access, unit, visits=unit.required + unit.optional[:1], **fields)

    def submit(
        self,
        access: OpportunityAccess,
        unit: Unit,
        entity_id: str,
        *,
        bug: bool = False,
        at: datetime.datetime = T0,
    ) -> list[UserVisit]:
        """Submit every form of ``unit`` for one entity through the host's processor.

        The processor reads the access afresh; refresh ``access`` to see its new accrual.
        """
        with override_settings(CCC_REPRODUCE_DUPLICATE_FLAG_BUG=bug):
            return [
                process_deliver_unit(
                    access,
                    du,
                    xform_id=str(uuid.uuid4()),
                    entity_id=entity_id,
                    visit_date=at,
                    received_at=at,
                )
                for du in unit.forms
            ]


@pytest.fixture
def host(db) -> HostFactory:
    """Factory for host rows (opportunities, units, accesses, works, visits)."""
    return HostFactory()


class RawConnection:
    """A second session on the test database, whichever driver Django uses (psycopg 3 or 2)."""

    def __init__(self) -> None:
        connection.ensure_connection()
        self._conn = connection.get_new_connection(connection.get_connection_params())
        self._conn.autocommit = True

    def execute(self, sql: str, params=None) -> list[tuple]:
        """Run one statement in autocommit mode; return its rows (empty when none)."""
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def raw_connection(db) -> Iterator[RawConnection]:
    """A second, independent session on the test database (autocommit), closed afterwards.

    Rows created by the test are invisible to it (the test runs in a transaction), but
    session-level things such as advisory locks are shared server-wide.
    """
    conn = RawConnection()
    try:
        yield conn
    finally:
        conn.close()


TEST_OPERATOR = "ledger-test"
# Operators some tests name explicitly, as people would be named.
NAMED_OPERATORS = ("alice", "bob", "carol")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    try:
        import django_redis  # noqa: F401
    except ImportError:
        skip_unprovided("django-redis", "not installed (requirements/dev.txt)")
    server = shutil.which("redis-server")
    if server is None:
        skip_unprovided("redis-server", "not on PATH (apt-get install redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    socket = folder / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(socket), "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.05)
        else:
            skip_unprovided("redis-server", f"{server} did not open {socket}")
        yield f"unix://{socket}?db=0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_cache(redis_url):
    caches = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }
    }
    with override_settings(CACHES=caches):
        from django.core.cache import cache

        cache.clear()
        yield cache


@pytest.fixture(autouse=True)
def ledger_operator(request, settings):
    """Tests act as one superuser unless they name operators; approval is tested on its own.

    Deployments have no default operator and require approval (see ledger.conf).
    """
    settings.LEDGER_DEFAULT_OPERATOR = TEST_OPERATOR
    settings.LEDGER_REQUIRE_APPROVAL = False
    uses_db = request.node.get_closest_marker("django_db") or {
        "db",
        "transactional_db",
    } & set(request.fixturenames)
    if not uses_db:
        return
    request.getfixturevalue("db")
    from django.contrib.auth import get_user_model

    User = get_user_model()
    for name in (TEST_OPERATOR, *NAMED_OPERATORS):
        if not User.objects.filter(username=name).exists():
            User.objects.create_superuser(username=name, email=None, password=None)
