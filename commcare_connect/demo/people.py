"""The people of the demo: an operator who plans and applies, a finance reviewer who approves,
and an auditor who may only look. Created once; re-running the demo finds them."""

from __future__ import annotations

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
