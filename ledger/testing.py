"""Assertions for test suites that run the ledger: events and state must agree.

Use them from any test on a real PostgreSQL database::

    from ledger import testing

    testing.assert_events_match_state()      # invariants 3 and 4: continuity, no drift
    testing.assert_batch_reverted(batch_id)  # invariant 5: statuses, dates, accruals restored
    testing.assert_append_only()             # invariant 1: the database refuses rewrites
    result = testing.run_corrections("verify", "--json")  # the command, in-process

With pytest, the ``corrections_ledger`` fixture (registered automatically through the
``pytest11`` entry point) returns this module.

Transactional tests (``TransactionTestCase``, ``django_db(transaction=True)``) flush the test
database with TRUNCATE, which the ledger's tables refuse. Adding ``ledger.flushable`` to
``INSTALLED_APPS`` in the *test* settings installs a ``flush`` that lifts only the TRUNCATE
guards, and only for test databases (names starting with ``test_``, or listed in
``settings.LEDGER_FLUSHABLE_DATABASES``), so those suites work unchanged; projects that do not
add it keep Django's own ``flush``. :func:`allow_flush` does the same for code that truncates
by hand.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pgtrigger
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from ledger import chain
from ledger.host import CompletedWork, OpportunityAccess, UserVisit
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    EntityKind,
    LedgerHead,
    PlannedChange,
)

# Every ledger table refuses TRUNCATE through a trigger named ``…_no_truncate``.
TRUNCATE_GUARDS = tuple(
    f"{model._meta.label}:{trigger.name}"
    for model in (CorrectionBatch, PlannedChange, CorrectionEvent, BatchEntry,
                  AccrualRecompute, LedgerHead)
    for trigger in model._meta.triggers
    if trigger.name.endswith("_no_truncate")
)  # fmt: skip
APPEND_ONLY_GUARDS = ("ledger_event_append_only", "ledger_event_no_truncate")


@dataclass
class CommandResult:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)


def run_corrections(*args: str) -> CommandResult:
    """Run ``./manage.py corrections …`` in-process; capture its output and exit code.

    Failures come out as they would on the command line: the ``CommandError``'s one line
    (``corrections: …``) on stderr, its ``returncode`` as the code and, for a usage error
    with ``--json``, the JSON error object on stdout.
    """
    from django.core.management.base import CommandError

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("corrections", *args, stdout=out, stderr=err)
        code = 0
    except CommandError as error:
        from ledger.cli.failure import UsageError, as_corrections_error

        failure = as_corrections_error(error)
        if isinstance(failure, UsageError) and "--json" in args:
            out.write(json.dumps(msgspec_builtins(failure.report())) + "\n")
        err.write(f"corrections: {failure}\n")
        code = failure.returncode
    except SystemExit as exit_:  # --help, --version
        code = int(exit_.code or 0)
    return CommandResult(code, out.getvalue(), err.getvalue())


def msgspec_builtins(value):
    import msgspec

    return msgspec.to_builtins(value)


@contextlib.contextmanager
def allow_flush(database: str | None = None) -> Iterator[None]:
    """Lift the ledger's TRUNCATE guards (only those) on this thread, e.g. to flush tests."""
    with pgtrigger.ignore(*TRUNCATE_GUARDS, databases=[database] if database else None):
        yield


def assert_events_match_state() -> None:
    """Every entity's events chain, and the last one's status is the entity's status."""
    from ledger.verify import run_checks

    report = run_checks(["continuity", "drift"])
    if not report.ok:
        raise AssertionError(f"ledger events and host state disagree: {report}")


def _installed_triggers() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
            [CorrectionEvent._meta.db_table],
        )
        return {name for (name,) in cursor.fetchall()}


RAISED_BY_TRIGGER = "P0001"  # SQLSTATE raise_exception: what the guards' RAISE gives
_GUARD_MESSAGE = re.compile(
    r"^pgtrigger: Cannot (?P<operations>[a-z]+(?: or [a-z]+)*) (?:rows from )?(?P<table>\S+) table"
)


def _guard_refusal(error: DatabaseError, operation: str, table: str) -> bool:
    """Whether ``error`` is the append-only guard's refusal of ``operation`` on ``table``.

    The guards raise ``pgtrigger: Cannot update or delete rows from <table> table`` (or
    ``Cannot truncate <table> table``) with SQLSTATE P0001. Anything else (a permission denied,
    a lock timeout, a foreign key) is not the guard: the helper must not count it as one.
    """
    from ledger.retry import sqlstate

    found = _GUARD_MESSAGE.search(str(error))
    return (
        sqlstate(error) == RAISED_BY_TRIGGER
        and found is not None
        and operation in found["operations"].split(" or ")
        and found["table"] == table
    )


def _probe_event() -> None:
    """An event to try UPDATE and DELETE on, for a ledger with none yet (rolled back after)."""
    probe = CorrectionBatch.objects.create(
        planner="visit_list",
        reason="ledger.testing: append-only probe (rolled back)",
        planned_by="ledger.testing",
        plan_digest="0" * 64,
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (now,) = cursor.fetchone()
    CorrectionEvent.objects.create(
        batch=probe, entity_kind=EntityKind.visit, entity_id=0, opportunity_id=0,
        from_status="approved", to_status="over_limit", reason="probe", recorded_at=now,
        hash_format=chain.CURRENT_FORMAT, prev_hash="0" * 64, hash="0" * 64,
    )  # fmt: skip


def assert_append_only() -> None:
    """The database itself refuses UPDATE, DELETE and TRUNCATE on the events table.

    Each statement must be refused *by the ledger's guard* (its SQLSTATE and message); any
    other database error fails the assertion with that error. UPDATE and DELETE are tried on
    existing events, or on a probe event made for the purpose when there are none; everything
    runs in a transaction that is rolled back, so nothing is lost if a guard is missing.
    """
    installed = _installed_triggers()
    missing = [g for g in APPEND_ONLY_GUARDS if not any(f"_{g}_" in t for t in installed)]
    if missing:
        raise AssertionError(f"append-only triggers not installed: {', '.join(missing)}")
    table = CorrectionEvent._meta.db_table
    quoted = connection.ops.quote_name(table)
    statements = [
        ("update", f"UPDATE {quoted} SET reason = reason"),
        ("delete", f"DELETE FROM {quoted}"),
        ("truncate", f"TRUNCATE {quoted} CASCADE"),
    ]
    with transaction.atomic():
        # Deferred checks still pending in the caller's transaction (or from the probe) would
        # make PostgreSQL refuse TRUNCATE before the guard is reached; run them now.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        if not CorrectionEvent.objects.exists():
            _probe_event()
        for operation, sql in statements:
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(sql)
            except DatabaseError as error:
                if _guard_refusal(error, operation, table):
                    continue
                raise AssertionError(
                    f"{sql!r} on the events table failed, but not by the append-only guard: {error}"
                ) from error
            transaction.set_rollback(True)
            raise AssertionError(f"the database accepted {sql!r} on the events table")
        transaction.set_rollback(True)


def assert_batch_reverted(batch_id: str) -> None:
    """After a complete undo: pre-batch statuses, dates and accruals are back, live.

    Compares the host's rows as they are now — each entity's status and
    ``status_modified_date``, each access's ``payment_accrued`` — with what they were before
    the batch (its events' from-states, its recompute rows' accrual before). Refuses to pass
    on nothing: a batch without events or without recompute rows fails the assertion.
    """
    batch = CorrectionBatch.objects.get(pk=batch_id)
    undos = list(batch.reverted_by.all())
    if not undos:
        raise AssertionError(f"batch {batch_id} has not been undone")
    if batch.state != "undone":
        raise AssertionError(f"batch {batch_id} is {batch.state}: some of its units were skipped")
    firsts: dict[tuple[str, int], CorrectionEvent] = {}
    for event in batch.events.order_by("id"):
        firsts.setdefault((event.entity_kind, event.entity_id), event)
    if not firsts:
        raise AssertionError(f"batch {batch_id} has no events: there is nothing to compare")
    before = dict(
        AccrualRecompute.objects.filter(batch=batch).values_list("access_id", "accrual_before")
    )
    if not before:
        raise AssertionError(
            f"batch {batch_id} recorded no accrual recompute: its accruals cannot be compared"
        )
    models = {EntityKind.visit: UserVisit, EntityKind.completed_work: CompletedWork}
    problems = []
    for kind, model in models.items():
        ids = [pk for (k, pk) in firsts if k == kind]
        found = {
            pk: (status, modified)
            for pk, status, modified in model.objects.filter(pk__in=ids).values_list(
                "pk", "status", "status_modified_date"
            )
        }
        for pk in ids:
            event = firsts[(kind.value, pk)]
            if pk not in found:
                problems.append(f"{kind} {pk}: gone")
            elif found[pk] != (event.from_status, event.prior_status_modified_date):
                status, modified = found[pk]
                problems.append(
                    f"{kind} {pk}: now {status} @ {modified}, before the batch "
                    f"{event.from_status} @ {event.prior_status_modified_date}"
                )
    pending = AccrualRecompute.objects.filter(batch__in=undos).exclude(state="done")
    for access_id, state in pending.values_list("access_id", "state"):
        problems.append(f"access {access_id}: the undo's recompute is {state}")
    live = dict(
        OpportunityAccess.objects.filter(pk__in=list(before)).values_list("pk", "payment_accrued")
    )
    for access_id, accrual in sorted(before.items()):
        if live.get(access_id) != accrual:
            problems.append(
                f"access {access_id}: payment_accrued {live.get(access_id)} now, "
                f"{accrual} before the batch"
            )
    if problems:
        raise AssertionError("batch not fully reverted:\n  " + "\n  ".join(problems))
