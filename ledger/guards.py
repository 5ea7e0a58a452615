"""Database guards that no ordinary role can lift, and no search path can reach.

The ledger's triggers are django-pgtrigger triggers, and pgtrigger lets a session skip a trigger
by naming it in the ``pgtrigger.ignore`` setting — a custom setting that *any* role may set.
That is what test suites use to flush the ledger's tables, and it must not be a way around the
append-only history for the application's own database role. The triggers here take the
ignore only from a role that is a member of the table's owner (the role that runs migrations,
or a superuser); for every other role the guard holds whatever ``pgtrigger.ignore`` says. Roles
that are not the owner also cannot disable, drop or replace triggers, so with the privilege
split of ``corrections privileges`` the application role cannot rewrite history at all; what
the owner and superusers can still do is caught by ``corrections verify`` and external anchors.

Every role may create temporary tables and views, and PostgreSQL looks a name up in the
session's temporary schema *before* ``pg_catalog`` and every other schema. A guard that read
``pg_class`` or ``ledger_correctionbatch`` by its bare name would read whatever the session put
there. So every guard function runs with a fixed ``search_path`` (:data:`SEARCH_PATH`:
``pg_catalog`` first, the temporary schema last) and names the ledger's own tables through the
schema of the table it fires on (``TG_TABLE_SCHEMA``): nothing a session creates is read.
"""

from __future__ import annotations

import pgtrigger
from pgtrigger import compiler

_IGNORE_CHECK = "IF ({ignore_func_name}(TG_NAME) IS TRUE) THEN"
_OWNER_ONLY_IGNORE_CHECK = (
    "IF ({ignore_func_name}(TG_NAME) IS TRUE AND pg_has_role(current_user, "
    "(SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')) THEN"
)
# The owner check first, every catalog object named with its schema.
_PINNED_IGNORE_CHECK = (
    "IF (pg_catalog.pg_has_role(current_user, (SELECT c.relowner FROM pg_catalog.pg_class c "
    "WHERE c.oid = TG_RELID), 'MEMBER') AND {ignore_func_name}(TG_NAME) IS TRUE) THEN"
)
#: The search path every guard function runs with: the catalog, then nothing but the
#: temporary schema, last (naming it keeps it from being searched first).
SEARCH_PATH = "pg_catalog, pg_temp"
#: How PostgreSQL records it in ``pg_proc.proconfig`` (``verify`` compares it).
PROCONFIG = [f"search_path={SEARCH_PATH}"]
_FUNCTION_END = "$$ LANGUAGE plpgsql;\n\n            DROP TRIGGER IF EXISTS {pgid} ON {table};"
_PINNED_FUNCTION_END = (
    f"$$ LANGUAGE plpgsql SET search_path = {SEARCH_PATH};\n\n"
    "            DROP TRIGGER IF EXISTS {pgid} ON {table};"
)


class GuardTriggerSql(compiler.UpsertTriggerSql):
    """pgtrigger's installation SQL, with the ignore honoured for the table's owner only.

    The form migrations 0005 to 0007 installed; kept unchanged so they replay as they ran
    (:class:`PinnedTriggerSql` replaced it in 0008).
    """

    def get_template(self) -> str:
        template = super().get_template()
        if _IGNORE_CHECK not in template:  # pragma: no cover - a pgtrigger template change
            raise RuntimeError("pgtrigger's trigger template changed; review ledger.guards")
        return template.replace(_IGNORE_CHECK, _OWNER_ONLY_IGNORE_CHECK)


class PinnedTriggerSql(compiler.UpsertTriggerSql):
    """:class:`GuardTriggerSql` whose function runs with a fixed search path and reads the
    catalog by schema, so no temporary object of the session can stand in for what it reads."""

    def get_template(self) -> str:
        template = super().get_template()
        if _IGNORE_CHECK not in template or _FUNCTION_END not in template:  # pragma: no cover
            raise RuntimeError("pgtrigger's trigger template changed; review ledger.guards")
        return template.replace(_IGNORE_CHECK, _PINNED_IGNORE_CHECK).replace(
            _FUNCTION_END, _PINNED_FUNCTION_END
        )


class Guard:
    """Mixin for pgtrigger triggers: compile with :class:`PinnedTriggerSql`."""

    def compile(self, model) -> compiler.Trigger:
        compiled = super().compile(model)
        return compiler.Trigger(name=compiled.name, sql=PinnedTriggerSql(**compiled.sql.kwargs))


class Trigger(Guard, pgtrigger.Trigger):
    pass


class Protect(Guard, pgtrigger.Protect):
    pass


class ReadOnly(Guard, pgtrigger.ReadOnly):
    pass


class FSM(Guard, pgtrigger.FSM):
    pass


def protect(name: str, operation) -> Protect:
    return Protect(name=name, operation=operation)


def refuse_truncate(name: str) -> Trigger:
    """pgtrigger's Protect is row-level; TRUNCATE needs a statement-level trigger."""
    return Trigger(
        name=name,
        operation=pgtrigger.Truncate,
        level=pgtrigger.Statement,
        when=pgtrigger.Before,
        func="RAISE EXCEPTION 'pgtrigger: Cannot truncate % table', TG_TABLE_NAME;",
    )


def set_once(name: str, columns: dict[str, str]) -> Trigger:
    """Refuse changing a column once it holds a value.

    ``columns`` maps column names to the SQL that tests "not set yet" on ``OLD`` (for example
    ``"OLD.applied_by = ''"``).
    """
    checks = "\n".join(
        f"""IF NOT ({unset}) AND NEW.{column} IS DISTINCT FROM OLD.{column} THEN
                RAISE EXCEPTION 'ledger: % of % is set once and never changes', '{column}',
                    TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
            END IF;"""
        for column, unset in columns.items()
    )
    return Trigger(
        name=name,
        operation=pgtrigger.Update,
        when=pgtrigger.Before,
        func=f"{checks}\nRETURN NEW;",
    )


def insert_only_when(name: str, conditions: dict[str, str]) -> Trigger:
    """Refuse a new row unless each condition holds; ``conditions`` maps the SQL tested on
    ``NEW`` to the message the refusal gives."""
    checks = "\n".join(
        f"""IF NOT ({condition}) THEN
                RAISE EXCEPTION 'ledger: %', '{message.replace("'", "''")}'
                    USING ERRCODE = 'restrict_violation';
            END IF;"""
        for condition, message in conditions.items()
    )
    return Trigger(
        name=name,
        operation=pgtrigger.Insert,
        when=pgtrigger.Before,
        func=f"{checks}\nRETURN NEW;",
    )
