"""Who acts: every plan, approval, apply, undo and discard names an active Django user.

Operators are users of the host (``AUTH_USER_MODEL``), found by their username, and need the
ledger's permission for the step: ``ledger.plan_correction``, ``ledger.approve_correction`` or
``ledger.apply_correction`` (superusers have them all). There is no silent default: without
``--operator`` the ``LEDGER_DEFAULT_OPERATOR`` setting is used if a deployment (or a test suite)
names one, and otherwise the command refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model

from ledger import conf
from ledger.errors import LedgerError, NotAllowed

PLAN = "plan_correction"
APPROVE = "approve_correction"
APPLY = "apply_correction"


__all__ = ["APPLY", "APPROVE", "PLAN", "Actor", "NotAllowed", "actor"]


@dataclass(frozen=True)
class Actor:
    username: str
    user_id: int


def actor(username: str | None, permission: str) -> Actor:
    """The active user named ``username`` holding ``ledger.<permission>``, or an error."""
    username = username or conf.get("DEFAULT_OPERATOR")
    if not username:
        raise LedgerError("name who is acting: --operator USERNAME (an active user)")
    User = get_user_model()
    field = User.USERNAME_FIELD
    max_length = User._meta.get_field(field).max_length or 150
    if len(username) > max_length:
        raise LedgerError(f"--operator is longer than {max_length} characters")
    user = User._default_manager.filter(**{field: username}).first()
    if user is None:
        raise NotAllowed(f"--operator {username!r} is not a user")
    if not user.is_active:
        raise NotAllowed(f"--operator {username!r} is not an active user")
    if not user.has_perm(f"ledger.{permission}"):
        raise NotAllowed(f"{username} lacks the permission ledger.{permission}")
    return Actor(username=getattr(user, field), user_id=user.pk)
