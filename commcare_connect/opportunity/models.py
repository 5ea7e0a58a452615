"""The host's opportunity models, as far as status, pay and caps are concerned.

Names, fields, enum values and semantics follow CommCare Connect's ``opportunity`` app so that
code written against this module (the correction ledger) runs unchanged in the host.
"""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from commcare_connect.organization.models import Organization


class BaseModel(models.Model):
    created_by = models.CharField(max_length=255, null=True, blank=True)
    modified_by = models.CharField(max_length=255, null=True, blank=True)
    date_created = models.DateTimeField(auto_now_add=True)
    date_modified = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class StatusStampMixin:
    """Stamp ``status_modified_date`` whenever ``status`` takes a new value on an instance.

    Mirrors the host's ``__setattr__`` override. A queryset ``.update()`` bypasses it, as in
    the host.
    """

    def __setattr__(self, name, value):
        if name == "status" and "status" in self.__dict__ and self.__dict__["status"] != value:
            super().__setattr__("status_modified_date", timezone.now())
        super().__setattr__(name, value)


class VisitValidationStatus(models.TextChoices):
    pending = "pending", "Pending"
    approved = "approved", "Approved"
    rejected = "rejected", "Rejected"
    over_limit = "over_limit", "Over Limit"
    duplicate = "duplicate", "Duplicate"
    trial = "trial", "Trial"


class CompletedWorkStatus(models.TextChoices):
    pending = "pending", "Pending"
    approved = "approved", "Approved"
    rejected = "rejected", "Rejected"
    over_limit = "over_limit", "Over Limit"
    incomplete = "incomplete", "Incomplete"


class VisitReviewStatus(models.TextChoices):
    pending = "pending", "Pending Review"
    agree = "agree", "Agree"
    disagree = "disagree", "Disagree"


class Opportunity(BaseModel):
    opportunity_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    name = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    is_test = models.BooleanField(default=True)
    managed = models.BooleanField(default=False)
    auto_approve_visits = models.BooleanField(default=True)
    auto_approve_payments = models.BooleanField(default=True)
    start_date = models.DateField(default=timezone.now)
    end_date = models.DateField(null=True, blank=True)
    total_budget = models.PositiveBigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")

    class Meta:
        verbose_name_plural = "opportunities"

    def __str__(self) -> str:
        return self.name


class OpportunityVerificationFlags(models.Model):
    opportunity = models.OneToOneField(
        Opportunity, on_delete=models.CASCADE, related_name="opportunityverificationflags"
    )
    duplicate = models.BooleanField(default=False)
    gps = models.BooleanField(default=False)
    location = models.PositiveIntegerField(default=0)


class OpportunityAccess(BaseModel):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    date_learn_started = models.DateTimeField(null=True, blank=True)
    accepted = models.BooleanField(default=False)
    payment_accrued = models.PositiveIntegerField(default=0)
    suspended = models.BooleanField(default=False)
    suspension_date = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.CharField(max_length=300, null=True, blank=True)
    last_active = models.DateTimeField(null=True, blank=True)

    class Meta:
        unique_together = ("user", "opportunity")
        verbose_name_plural = "opportunity accesses"


class PaymentUnit(models.Model):
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    name = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    amount = models.PositiveIntegerField(default=0)
    org_amount = models.PositiveIntegerField(default=0)
    max_total = models.IntegerField(null=True, blank=True)
    max_daily = models.IntegerField(null=True, blank=True)
    parent_payment_unit = models.ForeignKey(
        "self",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="child_payment_units",
    )
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class DeliverUnit(models.Model):
    app = models.CharField(max_length=255, blank=True, default="")
    slug = models.SlugField(max_length=255)
    name = models.CharField(max_length=255)
    payment_unit = models.ForeignKey(
        PaymentUnit,
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="deliver_units",
    )
    optional = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class PaymentInvoice(models.Model):
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    date = models.DateField()
    invoice_number = models.CharField(max_length=50)
    status = models.CharField(max_length=50, default="pending")

    class Meta:
        unique_together = ("opportunity", "invoice_number")


class CompletedWork(StatusStampMixin, models.Model):
    opportunity_access = models.ForeignKey(OpportunityAccess, on_delete=models.CASCADE)
    payment_unit = models.ForeignKey(PaymentUnit, on_delete=models.DO_NOTHING)
    status = models.CharField(
        max_length=50, choices=CompletedWorkStatus.choices, default=CompletedWorkStatus.incomplete
    )
    last_modified = models.DateTimeField(auto_now=True)
    entity_id = models.CharField(max_length=255, null=True, blank=True)
    entity_name = models.CharField(max_length=255, null=True, blank=True)
    reason = models.CharField(max_length=300, null=True, blank=True)
    status_modified_date = models.DateTimeField(null=True, blank=True)
    payment_date = models.DateTimeField(null=True, blank=True)
    invoice = models.ForeignKey(PaymentInvoice, on_delete=models.DO_NOTHING, null=True, blank=True)
    date_created = models.DateTimeField(default=timezone.now)
    saved_completed_count = models.IntegerField(default=0)
    saved_approved_count = models.IntegerField(default=0)
    saved_payment_accrued = models.IntegerField(default=0)
    saved_payment_accrued_usd = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    saved_org_payment_accrued = models.IntegerField(default=0)
    saved_org_payment_accrued_usd = models.DecimalField(max_digits=10, decimal_places=2, default=0)

    class Meta:
        unique_together = ("opportunity_access", "entity_id", "payment_unit")


class UserVisit(StatusStampMixin, BaseModel):
    opportunity = models.ForeignKey(Opportunity, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    opportunity_access = models.ForeignKey(
        OpportunityAccess, on_delete=models.CASCADE, null=True, blank=True
    )
    deliver_unit = models.ForeignKey(DeliverUnit, on_delete=models.PROTECT)
    entity_id = models.CharField(max_length=255, null=True, blank=True)
    entity_name = models.CharField(max_length=255, null=True, blank=True)
    visit_date = models.DateTimeField()
    status = models.CharField(
        max_length=50,
        choices=VisitValidationStatus.choices,
        default=VisitValidationStatus.pending,
    )
    form_json = models.JSONField(default=dict, blank=True)
    reason = models.CharField(max_length=300, null=True, blank=True)
    location = models.CharField(max_length=255, null=True, blank=True)
    xform_id = models.CharField(max_length=50, null=True, blank=True)
    flagged = models.BooleanField(default=False)
    flag_reason = models.JSONField(null=True, blank=True)
    completed_work = models.ForeignKey(
        CompletedWork, on_delete=models.SET_NULL, null=True, blank=True
    )
    status_modified_date = models.DateTimeField(null=True, blank=True)
    review_status = models.CharField(
        max_length=50, choices=VisitReviewStatus.choices, default=VisitReviewStatus.pending
    )
    review_created_on = models.DateTimeField(null=True, blank=True)
    justification = models.CharField(max_length=300, null=True, blank=True)

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
    end_date = models.DateField(null=True, blank=True)
    date_claimed = models.DateField(default=timezone.now)


class OpportunityClaimLimit(models.Model):
    opportunity_claim = models.ForeignKey(OpportunityClaim, on_delete=models.CASCADE)
    payment_unit = models.ForeignKey(PaymentUnit, on_delete=models.CASCADE)
    max_visits = models.IntegerField()
    end_date = models.DateField(null=True, blank=True)

    class Meta:
        unique_together = ("opportunity_claim", "payment_unit")


class Payment(models.Model):
    opportunity_access = models.ForeignKey(
        OpportunityAccess, on_delete=models.CASCADE, null=True, blank=True
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, null=True, blank=True
    )
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    amount_usd = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    date_paid = models.DateTimeField(default=timezone.now)
    payment_unit = models.ForeignKey(
        PaymentUnit, on_delete=models.DO_NOTHING, null=True, blank=True
    )
    invoice = models.ForeignKey(PaymentInvoice, on_delete=models.DO_NOTHING, null=True, blank=True)


class ExchangeRate(models.Model):
    currency_code = models.CharField(max_length=3)
    rate = models.DecimalField(max_digits=12, decimal_places=6)
    rate_date = models.DateField()
    fetched_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        unique_together = ("currency_code", "rate_date")

    @classmethod
    def latest_exchange_rate(cls, currency_code: str, date):
        """The rate on or before ``date`` (USD is always 1); ``None`` when none is known."""
        from decimal import Decimal

        if currency_code == "USD":
            return Decimal(1)
        row = (
            cls.objects.filter(currency_code=currency_code, rate_date__lte=date)
            .order_by("-rate_date")
            .values_list("rate", flat=True)
            .first()
        )
        return row
