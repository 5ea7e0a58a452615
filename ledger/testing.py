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
from collections.abc import Iterator
from dataclasses import dataclass

import pgtrigger
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from ledger.host import CompletedWork, UserVisit
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


def assert_append_only() -> None:
    """The database itself refuses UPDATE, DELETE and TRUNCATE on the events table."""
    installed = _installed_triggers()
    missing = [g for g in APPEND_ONLY_GUARDS if not any(f"_{g}_" in t for t in installed)]
    if missing:
        raise AssertionError(f"append-only triggers not installed: {', '.join(missing)}")
    table = connection.ops.quote_name(CorrectionEvent._meta.db_table)
    statements = [f"TRUNCATE {table} CASCADE"]
    if CorrectionEvent.objects.exists():
        statements += [f"UPDATE {table} SET reason = reason", f"DELETE FROM {table}"]
    for sql in statements:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql)
        except DatabaseError:
            continue
        raise AssertionError(f"the database accepted {sql!r} on the events table")


def assert_batch_reverted(batch_id: str) -> None:
    """After a complete undo: pre-batch statuses, dates and accruals are back."""
    batch = CorrectionBatch.objects.get(pk=batch_id)
    undo = batch.reverted_by.order_by("-created_at").first()
    if undo is None:
        raise AssertionError(f"batch {batch_id} has not been undone")
    if batch.state != "undone":
        raise AssertionError(f"batch {batch_id} is {batch.state}: some of its units were skipped")
    firsts: dict[tuple[str, int], CorrectionEvent] = {}
    for event in batch.events.order_by("id"):
        firsts.setdefault((event.entity_kind, event.entity_id), event)
    models = {EntityKind.visit: UserVisit, EntityKind.completed_work: CompletedWork}
    problems = []
    for kind, model in models.items():
        ids = [pk for (k, pk) in firsts if k == kind]
        for pk, status, modified in model.objects.filter(pk__in=ids).values_list(
            "pk", "status", "status_modified_date"
        ):
            event = firsts[(kind.value, pk)]
            if (status, modified) != (event.from_status, event.prior_status_modified_date):
                problems.append(
                    f"{kind} {pk}: now {status} @ {modified}, before the batch "
                    f"{event.from_status} @ {event.prior_status_modified_date}"
                )
    before = dict(
        AccrualRecompute.objects.filter(batch=batch).values_list("access_id", "accrual_before")
    )
    for access_id, state, after in AccrualRecompute.objects.filter(batch=undo).values_list(
        "access_id", "state", "accrual_after"
    ):
        if state != "done" or after != before.get(access_id):
            problems.append(
                f"access {access_id}: accrual {after} ({state}) after undo, "
                f"{before.get(access_id)} before the batch"
            )
    if problems:
        raise AssertionError("batch not fully reverted:\n  " + "\n  ".join(problems))
