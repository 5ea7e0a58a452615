"""The host's ``Program`` (``commcare_connect.program``): every opportunity belongs to one.

Only the model itself is mirrored (not applications or views): the opportunity's NOT NULL
``program`` foreign key and its ``save()``, which defaults the supervising organization to the
program's organization, need it.
"""

from uuid import uuid4

from django.db import models

from commcare_connect.opportunity.models import Country, Currency, DeliveryType
from commcare_connect.organization.models import Organization
from commcare_connect.utils.db import BaseModel, slugify_uniquely


class Program(BaseModel):
    program_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    name = models.CharField(max_length=255)
    slug = models.SlugField(max_length=255, unique=True)
    description = models.CharField()
    delivery_type = models.ForeignKey(DeliveryType, on_delete=models.PROTECT)
    budget = models.PositiveBigIntegerField()
    currency = models.ForeignKey(Currency, on_delete=models.PROTECT, null=True)
    country = models.ForeignKey(Country, on_delete=models.PROTECT, null=True)
    start_date = models.DateField()
    end_date = models.DateField()
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT)
    funder = models.ForeignKey(
        Organization,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="funded_programs",
    )
    watchers = models.ManyToManyField(Organization, related_name="watched_programs", blank=True)

    def save(self, *args, **kwargs):
        # As in the host, a new program's slug always comes from its name.
        if not self.id:
            self.slug = slugify_uniquely(self.name, self.__class__)
        super().save(*args, **kwargs)

    def __str__(self):
        return self.slug

    @property
    def currency_code(self):
        return self.currency.code if self.currency else None
