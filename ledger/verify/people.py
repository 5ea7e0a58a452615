"""Who took each step: the users lifecycle entries name, held to the ledger's rules.

Every step names a user by id and username. ``verify`` requires that user to exist under that
username, to be active and to hold the step's permission now (superusers hold every
permission); the approver of a batch must be another user than its planner, by user id. A
deactivated user's past steps are reported too: the record then names someone who can no
longer answer for them, and an auditor should know.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from ledger import people

#: The permission each action needs (an undo batch may be planned by whoever may apply).
PERMISSIONS = {
    "plan": (people.PLAN,),
    "approve": (people.APPROVE,),
    "apply": (people.APPLY,),
    "undo": (people.APPLY,),
    "discard": (people.PLAN,),
}
UNDO_PLAN = (people.PLAN, people.APPLY)


@dataclass(frozen=True)
class User:
    username: str
    active: bool
    permissions: frozenset[str]


class Directory:
    """The users some entries name, read once (one query, and the permission lookups of each
    user), not once per entry."""

    def __init__(self, user_ids: Iterable[int]) -> None:
        model = get_user_model()
        field = model.USERNAME_FIELD
        self.users: dict[int, User] = {}
        for user in model._default_manager.filter(pk__in=set(user_ids)):
            held = frozenset(
                p for p in (people.PLAN, people.APPROVE, people.APPLY)
                if user.is_active and user.has_perm(f"ledger.{p}")
            )  # fmt: skip
            self.users[user.pk] = User(getattr(user, field), bool(user.is_active), held)

    def problems(self, actor: str, actor_id: int, permissions: tuple[str, ...]) -> list[str]:
        """What is wrong with ``actor`` (user ``actor_id``) taking a step that needs one of
        ``permissions``; empty when nothing is."""
        user = self.users.get(actor_id)
        if user is None:
            return [f"{actor!r} (user {actor_id}) is not a user"]
        found = []
        if user.username != actor:
            found.append(f"{actor!r} is user {actor_id}, whose username is {user.username!r}")
        if not user.active:
            found.append(f"{actor!r} (user {actor_id}) is not an active user")
        elif not user.permissions & set(permissions):
            needed = " or ".join(f"ledger.{p}" for p in permissions)
            found.append(f"{actor!r} (user {actor_id}) lacks {needed}")
        return found
