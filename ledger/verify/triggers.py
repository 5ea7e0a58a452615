"""``triggers``: every guard is installed on the ledger's own tables, current, enabled in the
ordinary way, and runs its definition's function with the pinned search path.

Tables, triggers and functions are identified by OID, never by name: a table of the same name
in another schema (or a temporary one), with a trigger of the same name, or a function of the
same name holding the right body elsewhere, stands in for nothing. The ledger's tables are the
ones its own queries reach — the first schema of the search path that holds them, passing
over the session's temporary schema, which is itself reported when it shadows one.
"""

from __future__ import annotations

import hashlib
import re

import pgtrigger

from ledger import guards
from ledger.models import CorrectionEvent
from ledger.verify.common import Problem, Result, fetchall, scalar

_BODY = re.compile(r"CREATE OR REPLACE FUNCTION (\S+?)\(.*?\)\s+RETURNS \w+ AS \$\$(.*?)\$\$", re.S)
# pg_trigger.tgtype bits
_ROW, _BEFORE, _INSERT, _DELETE, _UPDATE, _TRUNCATE, _INSTEAD = 1, 2, 4, 8, 16, 32, 64
_OPERATIONS = {"INSERT": _INSERT, "DELETE": _DELETE, "UPDATE": _UPDATE, "TRUNCATE": _TRUNCATE}


def ledger_triggers() -> list[tuple[type, pgtrigger.Trigger]]:
    return [
        (model, trigger)
        for model, trigger in pgtrigger.registered()
        if model._meta.app_label == CorrectionEvent._meta.app_label
    ]


def _problem(message: str) -> Problem:
    return Problem(check="triggers", message=message)


def ledger_tables(names: list[str]) -> tuple[dict[str, tuple[int, str]], list[Problem]]:
    """Each table's OID and schema as the ledger's unqualified queries reach it — the first
    schema of the search path holding it, the temporary schema passed over — and a problem
    for each table missing, shadowed in this session, or apart from the others."""
    rows = fetchall(
        """
        SELECT t.name, c.oid, n.nspname, r.oid, rn.nspname
        FROM unnest(%s::text[]) AS t(name)
        LEFT JOIN LATERAL (
            SELECT k.oid, k.relnamespace
            FROM unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS s(nsp, pos)
            JOIN pg_catalog.pg_namespace sn ON sn.nspname = s.nsp
            JOIN pg_catalog.pg_class k ON k.relnamespace = sn.oid AND k.relname = t.name
            WHERE k.relkind IN ('r', 'p')
              AND sn.oid IS DISTINCT FROM pg_catalog.pg_my_temp_schema()
            ORDER BY s.pos LIMIT 1
        ) c ON true
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_catalog.pg_class r
               ON r.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(t.name))
        LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
        ORDER BY t.name
        """,
        [names],
    )
    found: dict[str, tuple[int, str]] = {}
    problems = []
    for name, oid, schema, reached, reached_schema in rows:
        if oid is None:
            problems.append(_problem(f"table {name} is in no schema of the search path"))
            continue
        found[name] = (oid, schema)
        if reached != oid:
            problems.append(
                _problem(
                    f"in this session {name} names {reached_schema}.{name}, not the ledger's "
                    f"{schema}.{name}: a temporary or other table shadows it"
                )
            )
    schemas = sorted({schema for _, schema in found.values()})
    if len(schemas) > 1:
        problems.append(_problem(f"the ledger's tables are spread over schemas {schemas}"))
    return found, problems


def _expected_type(kwargs: dict) -> int:
    when = kwargs.get("when", "")
    bits = _ROW if kwargs.get("level", "ROW") == "ROW" else 0
    bits |= _BEFORE if when == "BEFORE" else _INSTEAD if when.startswith("INSTEAD") else 0
    for operation in kwargs.get("operation", "").split(" OR "):
        bits |= _OPERATIONS.get(operation.strip(), 0)
    return bits


def _bodies(compiled) -> dict[str, str]:
    return {name: body for name, body in _BODY.findall(str(compiled.sql))}


def _same(a: str, b: str) -> bool:
    return hashlib.sha256(a.encode()).digest() == hashlib.sha256(b.encode()).digest()


def check_triggers() -> Result:
    expected = [(model, trigger, trigger.compile(model)) for model, trigger in ledger_triggers()]
    tables, problems = ledger_tables(sorted({m._meta.db_table for m, _, _ in expected}))
    rows = fetchall(
        """
        SELECT t.tgrelid, t.tgname, pg_catalog.obj_description(t.oid, 'pg_trigger'),
               t.tgenabled, t.tgtype, t.tgqual IS NOT NULL, p.proname, pn.nspname, p.prosrc,
               p.proconfig
        FROM pg_catalog.pg_trigger t
        JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
        JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
        WHERE NOT t.tgisinternal AND t.tgrelid = ANY(%s::oid[])
        """,
        [sorted(oid for oid, _ in tables.values())],
    )
    installed = {(row[0], row[1]): row[2:] for row in rows}
    ignore_functions: dict[str, str] = {}
    for model, trigger, compiled in sorted(expected, key=lambda e: e[2].sql.pgid):
        table = model._meta.db_table
        if table not in tables:
            continue
        oid, schema = tables[table]
        pgid = compiled.sql.pgid
        uri = f"{model._meta.label}:{trigger.name}"
        where = f"{schema}.{table}"
        found = installed.get((oid, pgid))
        if found is None:
            problems.append(_problem(f"trigger {uri} is not installed on {where}"))
            continue
        comment, enabled, tgtype, has_condition, function, function_schema, body, config = found
        if comment != compiled.hash:
            problems.append(
                _problem(f"trigger {uri} on {where} differs from its definition (outdated)")
            )
        if enabled != "O":
            state = {"D": "disabled", "R": "enabled for replicas only", "A": "always-enabled"}
            problems.append(
                _problem(
                    f"trigger {uri} on {where} is {state.get(enabled, enabled)}, "
                    "not enabled in the ordinary way"
                )
            )
        kwargs = {**compiled.sql.defaults, **compiled.sql.kwargs}
        if tgtype != _expected_type(kwargs) or has_condition != bool(kwargs.get("condition")):
            problems.append(
                _problem(
                    f"trigger {uri} on {where} fires on other events than its definition's "
                    "(re-created by hand)"
                )
            )
        bodies = _bodies(compiled)
        if function != pgid or function_schema != schema:
            problems.append(
                _problem(
                    f"trigger {uri} on {where} runs {function_schema}.{function}, not "
                    f"{schema}.{pgid}"
                )
            )
        elif not _same(body, bodies.get(pgid, "")):
            problems.append(
                _problem(
                    f"function {schema}.{pgid} differs from its definition (its body was replaced)"
                )
            )
        if list(config or []) != guards.PROCONFIG:
            settings = ", ".join(config) if config else "the caller's search path"
            problems.append(
                _problem(
                    f"function {schema}.{pgid} runs with {settings}, "
                    f"not search_path={guards.SEARCH_PATH}"
                )
            )
        ignore = kwargs.get("ignore_func_name", "")
        if ignore in bodies:
            ignore_functions[ignore] = bodies[ignore]
    problems += _ignore_function_problems(ignore_functions)
    problems += _ignore_setting_problems({c.sql.pgid for _, _, c in expected})
    return len(expected), len(problems), problems, ""


def _ignore_function_problems(functions: dict[str, str]) -> list[Problem]:
    """pgtrigger's ignore function, by its qualified name, holds its definition's body."""
    problems = []
    for name, body in sorted(functions.items()):
        stored = fetchall(
            "SELECT prosrc FROM pg_catalog.pg_proc "
            "WHERE oid = pg_catalog.to_regprocedure(%s || '(name)')",
            [name],
        )
        shown = name.replace('"', "")
        if not stored:
            problems.append(_problem(f"function {shown} is missing"))
        elif not _same(stored[0][0], body):
            problems.append(
                _problem(f"function {shown} differs from its definition (its body was replaced)")
            )
    return problems


def _ignore_setting_problems(pgids: set[str]) -> list[Problem]:
    """A pgtrigger.ignore set in this session, or as a database or role default, silences
    guards for the owner (and tells of an attempt by anyone else)."""
    problems = []
    ignored = scalar("SELECT pg_catalog.current_setting('pgtrigger.ignore', true)") or ""
    for pgid in sorted(pgids):
        if pgid in ignored:
            problems.append(
                _problem(f"trigger {pgid} is ignored in this session (pgtrigger.ignore)")
            )
    for role, database in fetchall(
        """
        SELECT COALESCE(r.rolname, '(every role)'), COALESCE(d.datname, '(every database)')
        FROM pg_catalog.pg_db_role_setting s
        LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
        LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
        WHERE EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE 'pgtrigger.ignore=%%')
          AND (s.setdatabase = 0 OR d.datname = pg_catalog.current_database())
        """
    ):
        problems.append(
            _problem(
                f"pgtrigger.ignore is set as a default for role {role} in database "
                f"{database} (ALTER ROLE/DATABASE … SET)"
            )
        )
    return problems
