"""The host's user model (``users.User``): no first/last name, a UUID, optional email."""

from uuid import uuid4

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.db import models
from django.db.models import Q, UniqueConstraint

from commcare_connect.users.managers import UserManager


class User(AbstractUser):
    username_validator = UnicodeUsernameValidator()

    user_id = models.UUIDField(editable=False, default=uuid4, unique=True)
    name = models.TextField("Name of User", blank=True)
    first_name = None  # type: ignore[assignment]
    last_name = None  # type: ignore[assignment]
    email = models.EmailField("email address", null=True, blank=True)
    username = models.CharField(
        "username",
        max_length=150,
        unique=True,
        help_text="Required. 150 characters or fewer. Letters, digits and @/./+/-/_ only.",
        validators=[username_validator],
        error_messages={"unique": "A user with that username already exists."},
        null=True,
    )
    phone_number = models.CharField(max_length=15, null=True, blank=True)

    REQUIRED_FIELDS = []

    objects = UserManager()

    class Meta:
        constraints = [
            UniqueConstraint(
                fields=["email"], name="unique_user_email", condition=Q(email__isnull=False)
            )
        ]

    def __str__(self):
        return self.email or self.username
