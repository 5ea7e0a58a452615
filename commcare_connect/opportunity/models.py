"""The host's opportunity models, field for field where the correction ledger touches them.

Names, types, nullability, defaults, ``on_delete``, related names, constraints and the status
stamping of ``CompletedWork`` and ``UserVisit`` follow CommCare Connect's
``commcare_connect/opportunity/models.py`` (see ``docs/host-fidelity.md`` for the commit checked
and for what is left out), so code written against this module runs unchanged in the host.
"""

from __future__ import annotations

import datetime
from uuid import uuid4

from django.core.validators import MinValueValidator
from django.db import models
from django.utils.timezone import now
from django.utils.translation import gettext, gettext_lazy

from commcare_connect.organization.models import Organization
from commcare_connect.users.models import User
from commcare_connect.utils.db import BaseModel

# Max length of the CharFields that hold a TextChoices value.
CHOICE_FIELD_MAX_LENGTH = 50


class StatusStampMixin:
    """The host's status stamping on ``CompletedWork`` and ``UserVisit``.

    A new instance starts from ``INITIAL_STATUS`` before Django assigns its fields, and every
    assignment of a *different* status sets ``status_modified_date`` to now. Consequences that
    are the host's too:

    * building an instance (``Model(...)`` or a row read from the database) passes through
      ``INITIAL_STATUS``; a stored ``status_modified_date`` is assigned after ``status``, so a
      loaded row keeps its stamp, but a new instance given another status is stamped now;
    * a row loaded with ``status`` deferred reads as ``INITIAL_STATUS``, not as stored;
    * a queryset ``update()`` or raw SQL bypasses all of it.
    """

    INITIAL_STATUS: str

    def __init__(self, *args, **kwargs):
        self.status = self.INITIAL_STATUS
        super().__init__(*args, **kwargs)

    def __setattr__(self, name, value):
        if name == "status" and self.__dict__.get("status") != value:
            super().__setattr__("status_modified_date", now())
        super().__setattr__(name, value)


class DeliveryType(models.Model):
    name = models.CharField(max_length=255)
    slug = models.CharField(max_length=255)
    description = models.CharField(max_length=255)

    def __str__(self):
        return self.name


class Currency(models.Model):
    code = models.CharField(max_length=3, primary_key=True)  # ISO 4217
    name = models.CharField(max_length=64)

    def __str__(self):
        return f"{self.code} ({self.name})"


class Country(models.Model):
    code = models.CharField(max_length=3, primary_key=True)  # ISO 3166-1 alpha-3
    name = models.CharField(max_length=128)
    currency = models.ForeignKey(Currency, on_delete=models.SET_NULL, null=True, blank=True)

    def __str__(self):
        return self.name


class Opportunity(BaseModel):
    opportunity_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        related_name="opportunities",
        related_query_name="opportunity",
    )
    name = models.CharField(max_length=255)
    description = models.TextField()
    short_description = models.CharField(max_length=50, null=True)
    active = models.BooleanField(default=True)
    start_date = models.DateField(default=datetime.date.today)
    end_date = models.DateField(null=True)
    total_budget = models.PositiveBigIntegerField(null=True)
    currency = models.ForeignKey(Currency, on_delete=models.PROTECT, null=True)
    country = models.ForeignKey(Country, on_delete=models.PROTECT, null=True)
    auto_approve_visits = models.BooleanField(default=True)
    auto_approve_payments = models.BooleanField(default=True)
    automatic_visit_verification = models.BooleanField(default=False)
    is_test = models.BooleanField(default=True)
    archived = models.BooleanField(default=False)
    delivery_type = models.ForeignKey(
        DeliveryType, null=True, blank=True, on_delete=models.DO_NOTHING
    )
    managed = models.BooleanField(default=False)
    program = models.ForeignKey("program.Program", on_delete=models.DO_NOTHING)
    supervising_organization = models.ForeignKey(
        Organization,
        on_delete=models.PROTECT,
        related_name="supervised_opportunities",
    )

    def save(self, *args, **kwargs):
        # The host's default: the program's organization supervises unless told otherwise.
        if not self.supervising_organization_id:
            self.supervising_organization_id = self.program.organization_id
        super().save(*args, **kwargs)

    def __str__(self):
        return self.name

    @property
    def currency_code(self):
        return self.currency.code if self.currency else None


class OpportunityVerificationFlags(models.Model):
    opportunity = models.OneToOneField(Opportunity, on_delete=models.CASCADE)
    duration = models.PositiveIntegerField(default=1)
    gps = models.BooleanField(default=False)
    duplicate = models.BooleanField(default=False)
    location = models.PositiveIntegerField(default=0)
    form_submission_start = models.TimeField(null=True, blank=True)
    form_submission_end = models.TimeField(null=True, blank=True)
    catchment_areas = models.BooleanField(default=False)


class XFormBaseModel(models.Model):
    """Columns of every row made from a submitted form."""

    xform_id = models.CharField(max_length=50)
    app_build_id = models.CharField(max_length=50, null=True, blank=True)
    app_build_version = models.IntegerField(null=True, blank=True)

    class Meta:
        abstract = True


class OpportunityAccess(models.Model):
    opportunity_access_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    date_learn_started = models.DateTimeField(null=True)
    accepted = models.BooleanField(default=False)
    invite_id = models.CharField(max_length=50, default=uuid4)
    payment_accrued = models.PositiveIntegerField(default=0)
    suspended = models.BooleanField(default=False)
    suspension_date = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.CharField(max_length=300, null=True, blank=True)
    invited_date = models.DateTimeField(auto_now_add=True, editable=False, null=True)
    completed_learn_date = models.DateTimeField(null=True)
    last_active = models.DateTimeField(null=True)

    class Meta:
        indexes = [
            models.Index(fields=["invite_id"]),
            models.Index(fields=["opportunity", "date_learn_started"]),
        ]
        unique_together = ("user", "opportunity")


class PaymentUnit(models.Model):
    payment_unit_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    opportunity = models.ForeignKey(Opportunity, on_delete=models.PROTECT)
    amount = models.PositiveIntegerField()
    org_amount = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=255)
    description = models.TextField()
    max_total = models.IntegerField(null=True)
    max_daily = models.IntegerField(null=True)
    parent_payment_unit = models.ForeignKey(
        "self",
        on_delete=models.DO_NOTHING,
        related_name="child_payment_units",
        blank=True,
        null=True,
    )
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)

    def __str__(self):
        return self.name


class DeliverUnit(models.Model):
    # The host's ``app`` is a foreign key to CommCareApp (CASCADE, related name
    # ``deliver_units``); apps are not mirrored, so it is a plain text column here.
    app = models.CharField(max_length=255, blank=True, default="")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=255)
    payment_unit = models.ForeignKey(
        PaymentUnit,
        on_delete=models.DO_NOTHING,
        related_name="deliver_units",
        related_query_name="deliver_unit",
        null=True,
    )
    optional = models.BooleanField(default=False)

    def __str__(self):
        return self.name


class VisitValidationStatus(models.TextChoices):
    pending = "pending", gettext("Pending")
    approved = "approved", gettext("Approved")
    rejected = "rejected", gettext("Rejected")
    over_limit = "over_limit", gettext("Over Limit")
    duplicate = "duplicate", gettext("Duplicate")
    trial = "trial", gettext("Trial")


class ExchangeRate(models.Model):
    currency_code = models.CharField(max_length=3)
    rate = models.DecimalField(max_digits=10, decimal_places=6)
    rate_date = models.DateField(db_index=True)
    fetched_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["currency_code", "rate_date"], name="unique_currency_code_date"
            )
        ]

    @classmethod
    def latest_exchange_rate(cls, currency_code, date):
        """The stored rate row on or before ``date``; when there is none, the host fetches one.

        The fetch (``opportunity.tasks.fetch_exchange_rates``, for the first of ``date``'s month)
        goes to an external rates service in the host; in this stand-in it raises.
        """
        from commcare_connect.opportunity.tasks import fetch_exchange_rates

        row = (
            cls.objects.filter(currency_code=currency_code, rate_date__lte=date)
            .order_by("-rate_date")
            .first()
        )
        if row is not None:
            return row
        return fetch_exchange_rates(date.replace(day=1), currency_code)


class InvoiceStatus(models.TextChoices):
    PENDING_NM_REVIEW = "pending_nm_review", gettext("Pending Network Manager Review")
    PENDING_PM_REVIEW = "pending_pm_review", gettext("Pending Program Manager Review")
    CANCELLED_BY_NM = "cancelled_by_nm", gettext("Cancelled by Network Manager")
    READY_TO_PAY = "ready_to_pay", gettext("Ready to Pay")
    REJECTED_BY_PM = "rejected_by_pm", gettext("Rejected by Program Manager")
    PAID = "paid", gettext("Paid")
    ARCHIVED = "archived", gettext("Archived")


class PaymentInvoice(models.Model):
    class InvoiceType(models.TextChoices):
        service_delivery = "service_delivery", gettext("Service Delivery")
        custom = "custom", gettext("Custom")

    payment_invoice_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    amount = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(0)])
    amount_usd = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    date = models.DateField()
    invoice_number = models.CharField(max_length=50)
    service_delivery = models.BooleanField(default=True)
    exchange_rate = models.ForeignKey(ExchangeRate, on_delete=models.DO_NOTHING, null=True)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    title = models.CharField(max_length=255, null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    date_of_expense = models.DateField(null=True, blank=True)
    status = models.CharField(
        choices=InvoiceStatus.choices,
        default=InvoiceStatus.PENDING_NM_REVIEW,
        max_length=CHOICE_FIELD_MAX_LENGTH,
    )
    archived_date = models.DateTimeField(null=True, blank=True)
    invoice_ticket_link = models.URLField(null=True, blank=True)

    class Meta:
        unique_together = ("opportunity", "invoice_number")


class Payment(models.Model):
    payment_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(0)])
    amount_usd = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    # The host's default is the naive ``datetime.datetime.utcnow``; the same instant, aware.
    date_paid = models.DateTimeField(default=now)
    # Set on payments to workers.
    opportunity_access = models.ForeignKey(
        OpportunityAccess, on_delete=models.DO_NOTHING, null=True, blank=True
    )
    payment_unit = models.ForeignKey(
        PaymentUnit,
        on_delete=models.CASCADE,
        related_name="payments",
        related_query_name="payment",
        null=True,
    )
    confirmed = models.BooleanField(default=False)
    confirmation_date = models.DateTimeField(null=True)
    # Set on payments to network manager organizations.
    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, null=True, blank=True
    )
    invoice = models.OneToOneField(
        PaymentInvoice, on_delete=models.DO_NOTHING, null=True, blank=True
    )
    payment_method = models.CharField(max_length=50, null=True, blank=True)
    payment_operator = models.CharField(max_length=50, null=True, blank=True)


class CompletedWorkStatus(models.TextChoices):
    pending = "pending", gettext("Pending")
    approved = "approved", gettext("Approved")
    rejected = "rejected", gettext("Rejected")
    over_limit = "over_limit", gettext("Over Limit")
    incomplete = "incomplete", gettext("Incomplete")


class CompletedWork(StatusStampMixin, models.Model):
    INITIAL_STATUS = CompletedWorkStatus.incomplete

    opportunity_access = models.ForeignKey(OpportunityAccess, on_delete=models.CASCADE)
    payment_unit = models.ForeignKey(PaymentUnit, on_delete=models.DO_NOTHING)
    status = models.CharField(
        max_length=CHOICE_FIELD_MAX_LENGTH,
        choices=CompletedWorkStatus.choices,
        default=CompletedWorkStatus.incomplete,
    )
    last_modified = models.DateTimeField(auto_now=True)
    entity_id = models.CharField(max_length=255, null=True, blank=True)
    entity_name = models.CharField(max_length=255, null=True, blank=True)
    reason = models.CharField(max_length=300, null=True, blank=True)
    status_modified_date = models.DateTimeField(null=True, default=now)
    payment_date = models.DateTimeField(null=True)
    date_created = models.DateTimeField(auto_now_add=True)

    # Cached results of the accrual recompute (``utils.completed_work.update_status``).
    saved_completed_count = models.IntegerField(default=0)
    saved_approved_count = models.IntegerField(default=0)
    saved_payment_accrued = models.IntegerField(default=0, help_text="Payment accrued for the FLW.")
    saved_payment_accrued_usd = models.DecimalField(
        max_digits=10, decimal_places=2, default=0, help_text="Payment accrued for the FLW in USD."
    )
    saved_org_payment_accrued = models.IntegerField(
        default=0, help_text=gettext_lazy("Payment accrued for the workspace")
    )
    saved_org_payment_accrued_usd = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        default=0,
        help_text=gettext_lazy("Payment accrued for the workspace in USD."),
    )
    invoice = models.ForeignKey(PaymentInvoice, on_delete=models.SET_NULL, null=True, blank=True)

    class Meta:
        unique_together = ("opportunity_access", "entity_id", "payment_unit")

    @property
    def completed_count(self):
        """Deliveries completed for this entity, duplicates included (live, not cached)."""
        return self._count_deliveries(approved=False)

    @property
    def approved_count(self):
        """Deliveries whose visits are approved and agreed (live, not cached)."""
        return self._count_deliveries(approved=True)

    def _count_deliveries(self, approved: bool) -> int:
        """The host's count: the fewest visits over the unit's required deliver units (0 without
        any), at most the total over its optional ones, and at most the same count summed over
        this entity's works of *every* child payment unit (when the unit has child units)."""
        visits = self.uservisit_set.all()
        if approved:
            visits = visits.filter(
                status=VisitValidationStatus.approved, review_status=VisitReviewStatus.agree
            )
        per_unit: dict[int, int] = {}
        for du_id in visits.values_list("deliver_unit_id", flat=True):
            per_unit[du_id] = per_unit.get(du_id, 0) + 1
        required, optional = [], []
        for du_id, is_optional in self.payment_unit.deliver_units.values_list("id", "optional"):
            (optional if is_optional else required).append(du_id)
        number = min((per_unit.get(du, 0) for du in required), default=0)
        if optional:
            number = min(number, sum(per_unit.get(du, 0) for du in optional))
        child_units = list(self.payment_unit.child_payment_units.all())
        if child_units:
            child_works = CompletedWork.objects.filter(
                opportunity_access=self.opportunity_access_id,
                payment_unit__in=child_units,
                entity_id=self.entity_id,
            )
            number = min(number, sum(w._count_deliveries(approved) for w in child_works))
        return number


class VisitReviewStatus(models.TextChoices):
    pending = "pending", gettext("Pending Review")
    agree = "agree", gettext("Agree")
    disagree = "disagree", gettext("Disagree")


class UserVisit(StatusStampMixin, XFormBaseModel):
    INITIAL_STATUS = VisitValidationStatus.pending

    user_visit_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    opportunity_access = models.ForeignKey(OpportunityAccess, on_delete=models.CASCADE, null=True)
    deliver_unit = models.ForeignKey(DeliverUnit, on_delete=models.PROTECT)
    entity_id = models.CharField(max_length=255, null=True, blank=True)
    entity_name = models.CharField(max_length=255, null=True, blank=True)
    visit_date = models.DateTimeField()
    status = models.CharField(
        max_length=CHOICE_FIELD_MAX_LENGTH,
        choices=VisitValidationStatus.choices,
        default=VisitValidationStatus.pending,
    )
    form_json = models.JSONField()
    reason = models.CharField(max_length=300, null=True, blank=True)
    location = models.CharField(null=True)
    flagged = models.BooleanField(default=False)
    flag_reason = models.JSONField(null=True, blank=True)
    completed_work = models.ForeignKey(
        CompletedWork, on_delete=models.DO_NOTHING, null=True, blank=True
    )
    status_modified_date = models.DateTimeField(null=True, default=now)
    review_status = models.CharField(
        max_length=CHOICE_FIELD_MAX_LENGTH,
        choices=VisitReviewStatus.choices,
        default=VisitReviewStatus.pending,
    )
    review_status_modified_date = models.DateTimeField(blank=True, null=True, default=now)
    review_created_on = models.DateTimeField(blank=True, null=True)
    justification = models.CharField(max_length=300, null=True, blank=True)
    date_created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["xform_id", "entity_id", "deliver_unit"],
                name="unique_xform_entity_deliver_unit",
            )
        ]
        indexes = [models.Index(fields=["opportunity", "status"])]


class OpportunityClaim(models.Model):
    opportunity_access = models.OneToOneField(OpportunityAccess, on_delete=models.CASCADE)
    max_payments = models.IntegerField(null=True)  # unused in the host ("to be removed")
    end_date = models.DateField()
    date_claimed = models.DateField(auto_now_add=True)


class OpportunityClaimLimit(models.Model):
    """The per-worker, per-payment-unit cap."""

    opportunity_claim = models.ForeignKey(OpportunityClaim, on_delete=models.CASCADE)
    payment_unit = models.ForeignKey(PaymentUnit, on_delete=models.CASCADE)
    max_visits = models.IntegerField()
    end_date = models.DateField(null=True, blank=True)

    class Meta:
        unique_together = [("opportunity_claim", "payment_unit")]
