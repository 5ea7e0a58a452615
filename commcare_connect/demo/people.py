"""The people of the demo: an operator who plans and applies, a finance reviewer who approves,
an auditor who may only look, and an administrator. Created once; re-running the demo finds
them. The auditor and the administrator get a fresh password each run, for the admin."""

from __future__ import annotations

import secrets

from django.contrib.auth.models import Group, Permission

from commcare_connect.users.models import User

OPERATOR = "amina"
REVIEWER = "fatuma"
AUDITOR = "auditor"
ADMIN = "admin"

GROUPS = {
    "Correction operators": ["plan_correction", "apply_correction"],
    "Finance reviewers": ["approve_correction"],
    "Ledger auditors": [
        "view_correctionbatch",
        "view_correctionevent",
        "view_plannedchange",
        "view_accrualrecompute",
        "view_batchentry",
    ],
}
MEMBERS = {
    OPERATOR: ("Amina Operator", "Correction operators"),
    REVIEWER: ("Fatuma Finance", "Finance reviewers"),
    AUDITOR: ("Audrey Auditor", "Ledger auditors"),
}


def ensure_people() -> dict[str, User]:
    groups = {}
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(
            Permission.objects.filter(content_type__app_label="ledger", codename__in=codenames)
        )
        groups[name] = group
    people = {}
    for username, (full_name, group) in MEMBERS.items():
        user, _ = User.objects.get_or_create(
            username=username, defaults={"name": full_name, "is_staff": username == AUDITOR}
        )
        user.groups.add(groups[group])
        people[username] = user
    return people


def admin_logins() -> dict[str, str]:
    """A superuser and the auditor (staff, view-only group) with new passwords: name -> password.

    The passwords are made for this run and printed by the demo; the demo's database is the
    demo's own, never a real one."""
    ensure_people()
    logins = {}
    admin, _ = User.objects.get_or_create(username=ADMIN, defaults={"name": "Demo Admin"})
    admin.is_staff = admin.is_superuser = True
    auditor = User.objects.get(username=AUDITOR)
    auditor.is_staff, auditor.is_superuser = True, False
    for user in (admin, auditor):
        password = secrets.token_urlsafe(9)
        user.set_password(password)
        user.save()
        logins[user.username] = password
    return logins
