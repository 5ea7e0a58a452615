"""Database guards that no ordinary role can lift.

The ledger's triggers are django-pgtrigger triggers, and pgtrigger lets a session skip a trigger
by naming it in the ``pgtrigger.ignore`` setting — a custom setting that *any* role may set.
That is what test suites use to flush the ledger's tables, and it must not be a way around the
append-only history for the application's own database role. The triggers here take the
ignore only from a role that is a member of the table's owner (the role that runs migrations,
or a superuser); for every other role the guard holds whatever ``pgtrigger.ignore`` says. Roles
that are not the owner also cannot disable, drop or replace triggers, so with the privilege
split of ``corrections privileges`` the application role cannot rewrite history at all; what
the owner and superusers can still do is caught by ``corrections verify`` and external anchors.
"""

from __future__ import annotations

import pgtrigger
from pgtrigger import compiler

_IGNORE_CHECK = "IF ({ignore_func_name}(TG_NAME) IS TRUE) THEN"
_OWNER_ONLY_IGNORE_CHECK = (
    "IF ({ignore_func_name}(TG_NAME) IS TRUE AND pg_has_role(current_user, "
    "(SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')) THEN"
)


class GuardTriggerSql(compiler.UpsertTriggerSql):
    """pgtrigger's installation SQL, with the ignore honoured for the table's owner only."""

    def get_template(self) -> str:
        template = super().get_template()
        if _IGNORE_CHECK not in template:  # pragma: no cover - a pgtrigger template change
            raise RuntimeError("pgtrigger's trigger template changed; review ledger.guards")
        return template.replace(_IGNORE_CHECK, _OWNER_ONLY_IGNORE_CHECK)


class Guard:
    """Mixin for pgtrigger triggers: compile with :class:`GuardTriggerSql`."""

    def compile(self, model) -> compiler.Trigger:
        compiled = super().compile(model)
        return compiler.Trigger(name=compiled.name, sql=GuardTriggerSql(**compiled.sql.kwargs))


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
