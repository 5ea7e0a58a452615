"""``triggers``: every guard is installed, current, enabled in the ordinary way, and runs its
definition's function body."""

from __future__ import annotations

import hashlib
import re

import pgtrigger

from ledger.models import CorrectionEvent
from ledger.verify.common import Problem, Result, fetchall, scalar


def ledger_triggers() -> list[tuple[type, pgtrigger.Trigger]]:
    return [
        (model, trigger)
        for model, trigger in pgtrigger.registered()
        if model._meta.app_label == CorrectionEvent._meta.app_label
    ]


def check_triggers() -> Result:
    expected = {}
    for model, trigger in ledger_triggers():
        pgid = trigger.get_pgid(model)
        expected[(model._meta.db_table, pgid)] = (model, trigger)
    rows = fetchall(
        """
        SELECT c.relname, t.tgname, obj_description(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal AND c.relname = ANY(%s) AND t.tgname = ANY(%s)
        """,
        [
            sorted({table for table, _ in expected}),
            sorted({pgid for _, pgid in expected}),
        ],
    )
    installed = {
        (table, name): (description, enabled) for table, name, description, enabled in rows
    }
    problems = []
    for (table, pgid), (model, trigger) in sorted(expected.items(), key=lambda kv: kv[0]):
        uri = f"{model._meta.label}:{trigger.name}"
        if (table, pgid) not in installed:
            problems.append(
                Problem(check="triggers", message=f"trigger {uri} is not installed on {table}")
            )
            continue
        description, enabled = installed[(table, pgid)]
        if description != trigger.compile(model).hash:
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {uri} on {table} differs from its definition (outdated)",
                )
            )
        if enabled != "O":
            state = {"D": "disabled", "R": "enabled for replicas only", "A": "always-enabled"}
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {uri} on {table} is {state.get(enabled, enabled)}, "
                    "not enabled in the ordinary way",
                )
            )
    problems += _function_body_problems(expected)
    # A pgtrigger.ignore set in this session, or as a database or role default, silences
    # guards for the owner (and tells of an attempt by anyone else).
    ignored = scalar("SELECT current_setting('pgtrigger.ignore', true)") or ""
    for _, pgid in expected:
        if pgid in ignored:
            problems.append(
                Problem(
                    check="triggers",
                    message=f"trigger {pgid} is ignored in this session (pgtrigger.ignore)",
                )
            )
    for role, database in fetchall(
        """
        SELECT COALESCE(r.rolname, '(every role)'), COALESCE(d.datname, '(every database)')
        FROM pg_db_role_setting s
        LEFT JOIN pg_roles r ON r.oid = s.setrole
        LEFT JOIN pg_database d ON d.oid = s.setdatabase
        WHERE EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE 'pgtrigger.ignore=%%')
          AND (s.setdatabase = 0 OR d.datname = current_database())
        """
    ):
        problems.append(
            Problem(
                check="triggers",
                message=f"pgtrigger.ignore is set as a default for role {role} in database "
                f"{database} (ALTER ROLE/DATABASE … SET)",
            )
        )
    return len(expected), len(problems), problems, ""


_BODY = re.compile(r"CREATE OR REPLACE FUNCTION (\S+?)\(.*?\)\s+RETURNS \w+ AS \$\$(.*?)\$\$", re.S)


def _function_body_problems(expected: dict) -> list[Problem]:
    """Each guard's trigger function (and pgtrigger's ignore function) as its definition says.

    A trigger's comment holds its definition's hash, but anyone owning the function could
    replace the body and leave the comment: the bodies themselves are compared.
    """
    wanted: dict[str, str] = {}
    for (_, _), (model, trigger) in expected.items():
        for name, body in _BODY.findall(str(trigger.compile(model).sql)):
            wanted[name.replace('"', "").split(".")[-1]] = body
    stored = dict(
        fetchall(
            "SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(%s)",
            [sorted(wanted)],
        )
    )
    problems = []
    for name, body in sorted(wanted.items()):
        if name not in stored:
            problems.append(Problem(check="triggers", message=f"function {name} is missing"))
        elif (
            hashlib.sha256(stored[name].encode()).digest() != hashlib.sha256(body.encode()).digest()
        ):
            problems.append(
                Problem(
                    check="triggers",
                    message=f"function {name} differs from its definition (its body was replaced)",
                )
            )
    return problems
