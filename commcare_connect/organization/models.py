"""The host's ``Organization`` (``commcare_connect.organization``), scalar fields only."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from commcare_connect.utils.db import BaseModel, slugify_uniquely


def _current_year():
    return timezone.now().year


class Organization(BaseModel):
    name = models.CharField(max_length=255)
    slug = models.SlugField(max_length=255, unique=True)
    program_manager = models.BooleanField(default=False)
    funder = models.BooleanField(default=False)
    short_name = models.CharField(max_length=40, null=True, blank=True)
    has_used_connect = models.BooleanField(default=False)
    year_of_establishment = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1800), MaxValueValidator(_current_year() + 1)],
    )
    team_size = models.PositiveIntegerField(null=True, blank=True)
    flws_managed = models.PositiveIntegerField(null=True, blank=True)
    regions = models.TextField(blank=True)
    website = models.URLField(blank=True)
    office_address = models.TextField(blank=True)
    contact_emails = models.TextField(blank=True, help_text="One email address per line.")
    eoi_links = models.TextField(blank=True, help_text="One EOI link per line.")
    notes = models.TextField(blank=True)
    verified = models.BooleanField(default=False)

    def save(self, *args, **kwargs):
        # As in the host, a new organization's slug always comes from its name.
        if not self.id:
            self.slug = slugify_uniquely(self.name, self.__class__)
        super().save(*args, **kwargs)

    def __str__(self):
        return self.slug
