import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The host's user: a Django user with a stable UUID and a display name."""

    user_id = models.UUIDField(default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255, blank=True)
    username = models.CharField(max_length=150, unique=True, null=True, blank=True)

    def __str__(self) -> str:
        return self.username or self.name or str(self.pk)
