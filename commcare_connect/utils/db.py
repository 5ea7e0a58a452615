"""The host's common model base and its slug helper (``commcare_connect.utils.db``)."""

from django.db import models
from django.utils.text import slugify


class BaseModel(models.Model):
    """Audit columns shared by most host models.

    ``created_by`` and ``modified_by`` are NOT NULL text columns without a default, as in the
    host: the ORM writes an empty string when a caller leaves them out, raw SQL must give them.
    """

    created_by = models.CharField(max_length=255)
    modified_by = models.CharField(max_length=255)
    date_created = models.DateTimeField(auto_now_add=True)
    date_modified = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


def slugify_uniquely(value, model, slugfield="slug"):
    """``slugify(value)``, suffixed ``-1``, ``-2``, … until no row of ``model`` has it."""
    base = slugify(value)
    candidate = base
    suffix = 0
    while model.objects.filter(**{slugfield: candidate}).exists():
        suffix += 1
        candidate = f"{base}-{suffix}"
    return candidate
