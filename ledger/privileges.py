"""The recommended privilege split: an application role that may read and append, no more.

The role that runs migrations owns the ledger's tables; the application's own role gets:

* ``SELECT, INSERT`` on the append-only tables (events, lifecycle entries, planned changes);
* ``SELECT, INSERT, UPDATE`` on the tables whose rows move through states (batches, accrual
  recomputes, the chain head) — every update there is held to its allowed transitions and
  set-once columns by the ledger's guards, which this role cannot lift (:mod:`ledger.guards`);
* the sequences behind the ids;
* nothing else: no ``DELETE``, ``TRUNCATE``, ``REFERENCES`` or ``TRIGGER``, and, not being the
  owner, it cannot alter, disable or replace the guards.

The anchor witness (``corrections anchor`` run apart, :mod:`ledger.anchors`) gets a role of its
own that only reads: ``SELECT`` on the ledger's tables and on the tables that say who the users
are and what they may do. Nothing it does can change the record it signs.
"""

from __future__ import annotations

import re

from django.db import connection

from ledger.errors import LedgerError
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    LedgerHead,
    PlannedChange,
)

APPEND_ONLY = (CorrectionEvent, BatchEntry, PlannedChange)
GUARDED_UPDATES = (CorrectionBatch, AccrualRecompute, LedgerHead)
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def statements(app_role: str) -> list[str]:
    """The GRANT/REVOKE statements for ``app_role``, to be run by the owner."""
    if not _ROLE.fullmatch(app_role or ""):
        raise LedgerError(
            f"not a role name: {app_role!r} (letters, digits, _ and $, at most 63 characters)"
        )
    role = connection.ops.quote_name(app_role)
    tables = [m._meta.db_table for m in (*APPEND_ONLY, *GUARDED_UPDATES)]
    quoted = ", ".join(connection.ops.quote_name(t) for t in tables)
    lines = [
        "-- Run as the role that owns the ledger's tables (the one that runs migrations).",
        f"REVOKE ALL ON TABLE {quoted} FROM {role};",
    ]
    for model in APPEND_ONLY:
        lines.append(f"GRANT SELECT, INSERT ON TABLE {_q(model)} TO {role};")
    for model in GUARDED_UPDATES:
        lines.append(f"GRANT SELECT, INSERT, UPDATE ON TABLE {_q(model)} TO {role};")
    sequences = []
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
            (sequence,) = cursor.fetchone()
            if sequence:
                sequences.append(sequence)
    if sequences:
        lines.append(f"GRANT USAGE, SELECT ON SEQUENCE {', '.join(sequences)} TO {role};")
    lines.append(
        f"-- {app_role} must not own these tables nor be a superuser: check with \\dp in psql."
    )
    return lines


def witness_statements(role_name: str) -> list[str]:
    """The GRANT/REVOKE statements for the anchor witness's read-only ``role_name``."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    if not _ROLE.fullmatch(role_name or ""):
        raise LedgerError(
            f"not a role name: {role_name!r} (letters, digits, _ and $, at most 63 characters)"
        )
    role = connection.ops.quote_name(role_name)
    user = get_user_model()
    models = [*APPEND_ONLY, *GUARDED_UPDATES]
    people = [user, user.groups.through, user.user_permissions.through, Group,
              Group.permissions.through, Permission, ContentType]  # fmt: skip
    ledger = ", ".join(_q(m) for m in models)
    return [
        "-- Run as the role that owns the ledger's tables (the one that runs migrations).",
        f"REVOKE ALL ON TABLE {ledger} FROM {role};",
        f"GRANT SELECT ON TABLE {ledger} TO {role};",
        "-- Who the users are and what they may do (the lifecycle's rules):",
        f"GRANT SELECT ON TABLE {', '.join(dict.fromkeys(_q(m) for m in people))} TO {role};",
        f"-- {role_name} reads only: no INSERT, UPDATE or DELETE anywhere, no membership in the "
        "application's role.",
    ]


def _q(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)
