"""Guards no search path reaches, and a trigger check no decoy fools.

Every role may create temporary tables and views, and PostgreSQL looks names up in the
session's temporary schema first. The guards read the catalog and the ledger's tables by schema
under a pinned search path, so the application's role cannot stand a temporary ``pg_class`` or
``ledger_correctionbatch`` in for what they read. The owner, who can drop and replace guards,
cannot hide that behind a table, trigger or function of the same name in another schema:
``verify`` identifies them by OID.
"""

from __future__ import annotations

import pgtrigger
from django.db import connection

from ledger import verify
from ledger.models import AccrualRecompute, CorrectionBatch, PlannedChange

from .conftest import all_guard_pgids, lift_all, problems, refused, sql

BATCHES = CorrectionBatch._meta.db_table
PLANNED = PlannedChange._meta.db_table
RECOMPUTES = AccrualRecompute._meta.db_table
SET_ONCE = "ledger_batch_lifecycle_set_once"
# A temporary view that makes every table look owned by the session's own role.
FAKE_PG_CLASS = (
    "CREATE TEMP VIEW pg_class AS SELECT c.oid, "
    "(SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) AS relowner "
    "FROM pg_catalog.pg_class c"
)
A_PLANNED_CHANGE = (
    f"INSERT INTO {PLANNED} (batch_id, entity_kind, entity_id, opportunity_id, from_status, "
    "to_status, excluded, suspended, paid, invoiced) VALUES (%s, 'visit', 1, 1, 'approved', "
    "'over_limit', '', false, false, false)"
)


def _guard(name: str):
    return next((m, t) for m, t in verify.ledger_triggers() if t.name == name)


def _rewrites(batch: str, recompute: int) -> list[tuple[str, list]]:
    return [
        (f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [batch]),
        (f"UPDATE {BATCHES} SET state = 'planned' WHERE id = %s", [batch]),
        (f"UPDATE {BATCHES} SET created_at = created_at - interval '30 days' WHERE id = %s",
         [batch]),
        (f"UPDATE {RECOMPUTES} SET accrual_after = 0 WHERE id = %s", [recompute]),
    ]  # fmt: skip


def test_a_temporary_pg_class_does_not_lift_the_guards_for_the_app_role(applied, roles):
    _, app = roles
    recompute = AccrualRecompute.objects.filter(batch_id=applied.batch, state="done").first()
    sql(f"SET ROLE {app}")
    sql(FAKE_PG_CLASS)
    assert sql("SELECT count(*) FROM pg_class")[0][0] > 0  # the session sees its own pg_class
    for statement, params in _rewrites(applied.batch, recompute.pk):
        refusal = refused(statement, params, ignore=all_guard_pgids())
        assert any(
            words in refusal
            for words in ("set once", "Invalid transition", "Cannot update", "done and final")
        ), refusal
    sql("RESET ROLE")


def test_a_temporary_batch_table_does_not_unfreeze_an_applied_plan(applied, roles):
    owner, app = roles
    for role in (app, owner):
        sql(f"SET ROLE {role}")
        sql("CREATE TEMP TABLE ledger_correctionbatch (id uuid, state text)")
        sql("INSERT INTO ledger_correctionbatch VALUES (%s, 'planned')", [applied.batch])
        assert "only be added to a planned batch" in refused(A_PLANNED_CHANGE, [applied.batch])
        if role == owner:
            assert "frozen" in refused(
                f"UPDATE {PLANNED} SET access_id = 0 WHERE batch_id = %s", [applied.batch]
            )
        sql("DROP TABLE pg_temp.ledger_correctionbatch")
        sql("RESET ROLE")


def test_the_owner_lifting_the_guards_is_caught_by_verify(applied, roles):
    """The owner may lift guards (migrations and flush do); what it rewrites is caught."""
    owner, _ = roles
    batch = applied.batch
    sql(f"SET ROLE {owner}")
    with lift_all():
        sql(f"UPDATE {BATCHES} SET applied_by = 'mallory', "
            "created_at = created_at - interval '30 days' WHERE id = %s", [batch])  # fmt: skip
        sql(A_PLANNED_CHANGE, [batch])
    sql("RESET ROLE")
    report = verify.run_checks(["lifecycle", "plans"])
    lifecycle = " | ".join(problems(report, "lifecycle"))
    assert "applied_by says 'mallory'" in lifecycle and "created_at says" in lifecycle
    assert any("do not give its plan digest" in m for m in problems(report, "plans"))
    assert any("was never planned" not in m and "has no event" in m
               for m in problems(report, "plans"))  # fmt: skip

    sql(f"SET ROLE {owner}")
    with lift_all():
        sql(f"UPDATE {BATCHES} SET state = 'planned' WHERE id = %s", [batch])
    sql("RESET ROLE")
    report = verify.run_checks(["lifecycle", "batches"])
    assert any("is planned but records an apply" in m for m in problems(report, "lifecycle"))
    assert any("planned yet has events" in m for m in problems(report, "batches"))


def _decoy_schema(owner: str) -> None:
    database = connection.settings_dict["NAME"]
    sql(f'GRANT CREATE ON DATABASE "{database}" TO {owner}')
    sql(f"GRANT CREATE ON SCHEMA public TO {owner}")  # as the role that runs migrations has
    sql(f"SET ROLE {owner}")
    sql("CREATE SCHEMA decoy")


def test_a_decoy_schema_does_not_hide_a_dropped_guard(applied, roles):
    owner, app = roles
    model, trigger = _guard(SET_ONCE)
    compiled = trigger.compile(model)
    pgid = compiled.sql.pgid
    body = sql("SELECT prosrc FROM pg_proc WHERE oid = %s::regproc", [f"public.{pgid}"])[0][0]
    assert verify.run_checks(["triggers"]).ok
    _decoy_schema(owner)
    # A table and a trigger of the same names, the same comment, the real function's body.
    sql(f"CREATE TABLE decoy.{BATCHES} (id uuid)")
    sql(f"CREATE FUNCTION decoy.{pgid}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$")
    sql(f"CREATE TRIGGER {pgid} BEFORE UPDATE ON decoy.{BATCHES} FOR EACH ROW "
        f"EXECUTE FUNCTION decoy.{pgid}()")  # fmt: skip
    sql(f"COMMENT ON TRIGGER {pgid} ON decoy.{BATCHES} IS '{compiled.hash}'")
    sql(f"DROP TRIGGER {pgid} ON public.{BATCHES}")
    sql("RESET ROLE")
    sql(f"SET ROLE {app}")
    sql(f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [applied.batch])
    sql("RESET ROLE")
    messages = problems(verify.run_checks(["triggers"]), "triggers")
    assert f"trigger {model._meta.label}:{SET_ONCE} is not installed on public.{BATCHES}" in (
        messages
    )


def test_a_decoy_function_does_not_hide_a_no_op_guard(applied, roles):
    owner, app = roles
    model, _ = _guard(SET_ONCE)
    pgid = _guard(SET_ONCE)[1].get_pgid(model)
    body = sql("SELECT prosrc FROM pg_proc WHERE oid = %s::regproc", [f"public.{pgid}"])[0][0]
    _decoy_schema(owner)
    # The guard's own function becomes a no-op (search path and all); a function of the same
    # name elsewhere keeps the real body.
    sql(f"CREATE OR REPLACE FUNCTION public.{pgid}() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN NEW; END; $$")  # fmt: skip
    sql(f"CREATE FUNCTION decoy.{pgid}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$")
    sql("RESET ROLE")
    sql(f"SET ROLE {app}")
    sql(f"UPDATE {BATCHES} SET applied_by = 'mallory' WHERE id = %s", [applied.batch])
    sql("RESET ROLE")
    messages = problems(verify.run_checks(["triggers"]), "triggers")
    assert f"function public.{pgid} differs from its definition (its body was replaced)" in (
        messages
    )


def test_a_guard_function_without_its_search_path_is_reported(db):
    model, _ = _guard(SET_ONCE)
    pgid = _guard(SET_ONCE)[1].get_pgid(model)
    sql(f"ALTER FUNCTION public.{pgid}() RESET search_path")
    messages = problems(verify.run_checks(["triggers"]), "triggers")
    assert any(f"function public.{pgid} runs with the caller's search path" in m
               for m in messages)  # fmt: skip


def test_a_temporary_table_shadowing_a_ledger_table_is_reported(db):
    sql(f"CREATE TEMP TABLE {BATCHES} (id uuid)")
    messages = problems(verify.run_checks(["triggers"]), "triggers")
    assert any("a temporary or other table shadows it" in m for m in messages)
    sql(f"DROP TABLE pg_temp.{BATCHES}")


def test_pgtrigger_ignore_still_works_for_the_owner(applied):
    """Test suites and migrations lift guards as the owner; the pinned guards still let them."""
    with pgtrigger.ignore(f"ledger.CorrectionBatch:{SET_ONCE}"):
        sql(f"UPDATE {BATCHES} SET applied_by = 'someone' WHERE id = %s", [applied.batch])
    assert CorrectionBatch.objects.get(pk=applied.batch).applied_by == "someone"
