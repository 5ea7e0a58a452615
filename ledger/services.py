"""Plan, apply, undo and recompute: the only entry points that change anything.

Interfaces (the ``corrections`` command, admin, test helpers) call these functions; planners
only read, and :mod:`ledger.projector` is the only writer of host statuses.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

from django.db import DatabaseError, connection, transaction

from ledger import conf, digests, entries, host, people, recomputes
from ledger.assumptions import Assumptions
from ledger.errors import ConflictError, LedgerError, NotFound, WrongState
from ledger.errors import StalePlan as StalePlan  # raised by apply; long importable from here
from ledger.models import (
    AccrualRecompute,
    BatchState,
    CorrectionBatch,
    CorrectionEvent,
    PlannedChange,
    Planner,
    RecomputeState,
)
from ledger.people import Actor
from ledger.planners.held import HeldRows
from ledger.planners.over_cap import OverCapOptions, resolve_opportunities
from ledger.planners.over_cap import plan_over_cap as over_cap_rows
from ledger.planners.rows import FEW_VALUED, PlannedRow, plan_digest, with_expectations
from ledger.planners.visit_list import VisitListOptions, plan_visit_list, staged_visit_list
from ledger.pricing import AccessPrice, Stamps, price
from ledger.projector import project
from ledger.reports import plan_report, scan_report
from ledger.retry import (
    FIRST_PAUSE,
    LONGEST_PAUSE,
    SERIALIZATION_FAILURE,
    sqlstate,
    with_backoff,
)
from ledger.schema import (
    AccessOutcome,
    PendingRecompute,
    PlanReport,
    RunReport,
    ScanReport,
    to_builtins,
)
from ledger.sql import chunks, db_now, insert_rows, shared_strings, table
from ledger.sql import cursor as sql_cursor

Progress = Callable[[str], None]
T = TypeVar("T")
PRICING_PASSES = 3
PROGRESS_SECONDS = 5.0  # between progress lines of a long recompute


def _require_reason(reason: str | None) -> str:
    if not reason or not reason.strip():
        raise LedgerError("a reason is required (--reason TEXT)")
    return reason.strip()


def _check_ticket(ticket: str | None) -> str:
    ticket = (ticket or "").strip()
    limit = CorrectionBatch._meta.get_field("ticket").max_length
    if len(ticket) > limit:
        raise LedgerError(f"--ticket is longer than {limit} characters")
    return ticket


def _get_batch(batch_id: str, *, lock: bool = False) -> CorrectionBatch:
    try:
        uuid.UUID(str(batch_id))
    except ValueError:
        raise NotFound(f"not a batch id: {batch_id!r}") from None
    query = CorrectionBatch.objects.all()
    if lock:
        query = query.select_for_update()
    try:
        return query.get(pk=batch_id)
    except CorrectionBatch.DoesNotExist:
        raise NotFound(f"unknown batch {batch_id}") from None


def _opportunity_ids(uuids: Iterable[str]) -> list[int]:
    uuids = list(dict.fromkeys(str(u) for u in uuids))
    if not uuids:
        raise LedgerError("name at least one opportunity (--opportunity UUID), or use --all")
    bad = []
    for u in uuids:
        try:
            uuid.UUID(u)
        except ValueError:
            bad.append(u)
    if bad:
        raise LedgerError(f"not an opportunity UUID: {', '.join(bad)}")
    found = resolve_opportunities(uuids)
    unknown = [u for u in uuids if str(uuid.UUID(u)) not in found]
    if unknown:
        raise LedgerError(f"unknown opportunity: {', '.join(unknown)}")
    return sorted(found.values())


def _check_work_ids(ids: Iterable[int]) -> frozenset[int]:
    ids = frozenset(ids)
    if ids:
        known = set(host.CompletedWork.objects.filter(pk__in=ids).values_list("pk", flat=True))
        unknown = sorted(ids - known)
        if unknown:
            shown = ", ".join(map(str, unknown[:20]))
            raise LedgerError(f"unknown completed work ids in the exclusion list: {shown}")
    return ids


def _store_plan(
    planner: str,
    rows: list[PlannedRow] | HeldRows,
    prices: dict[int, AccessPrice],
    *,
    reason: str,
    actor: Actor,
    ticket: str,
    scope: dict,
    duplicate_entries: list[str],
    pricing: str = "projection",
    order_dependent: Iterable[int] = (),
    reverts: CorrectionBatch | None = None,
) -> PlanReport:
    held = isinstance(rows, HeldRows)
    digest = rows.priced_digest if held else plan_digest(rows)
    batch_id = uuid.uuid4()
    report = plan_report(
        str(batch_id), BatchState.planned, planner, reason, scope, digest, rows, prices,
        duplicate_entries, pricing=pricing, order_dependent=order_dependent,
    )  # fmt: skip
    with transaction.atomic():
        if reverts is not None:
            _check_undoable(_get_batch(str(reverts.pk), lock=True))
        if held:
            # The rows are read again to be stored: they must be the rows priced. The batch
            # row follows its changes (the foreign key is checked at commit).
            _, stored = rows.store(batch_id)
            if stored != digest:
                raise LedgerError(
                    "the rows of this plan changed while it was priced (a batch applied, a "
                    "work paid or an access suspended meanwhile); plan it again"
                )
        batch = CorrectionBatch.objects.create(
            id=batch_id,
            planner=planner,
            reason=reason,
            ticket=ticket,
            planned_by=actor.username,
            plan_digest=digest,
            scope=scope,
            reverts=reverts,
            summary={"plan": to_builtins(report)},
        )
        if not held:
            insert_rows(
                PlannedChange,
                ("batch_id", *PlannedRow._fields),
                ((batch_id, *row) for row in rows),
            )
        entries.record(batch, "plan", actor, entries.plan_details(batch))
    return report


def _leave_out(
    rows: list[PlannedRow] | HeldRows, unstable: dict[int, str]
) -> list[PlannedRow] | HeldRows:
    """Exclude the units (a work with its visits) the host's recompute would not keep, in
    place (the plan is not held twice); return ``rows``."""
    if isinstance(rows, HeldRows):
        rows.leave_out(unstable)
        return rows
    for i, r in enumerate(rows):
        if not r.excluded and r.completed_work_id in unstable:
            rows[i] = r._replace(excluded="would_not_hold")
    return rows


def _priced_plan(
    planner: str,
    rows: list[PlannedRow] | HeldRows,
    reason: str,
    actor: Actor,
    ticket: str,
    scope: dict,
    duplicate_entries: list[str] | None = None,
    *,
    insist: bool = False,
    exact: bool = False,
    progress: Progress | None = None,
    reverts: CorrectionBatch | None = None,
    stamps: dict[tuple[str, int], object] | None = None,
) -> PlanReport:
    """Price and store the rows as a planned batch; with nothing to flip, report and store none.

    A plan must hold after the host's own recompute: a planned work the recompute would move
    elsewhere (a rejected visit makes it rejected, say) is left out with reason
    ``would_not_hold`` and the rest re-priced — or, for a list that insists on every unit it
    names, the plan is refused. An undo plan (``reverts``) carries its expectations already —
    each row expects the event it inverts — and ``stamps``, the ``status_modified_date`` each
    row restores, which prices approved work at the rate of its own day. ``exact`` prices with
    the host's own code instead of the projection of its rules (:mod:`ledger.pricing`).
    """
    duplicate_entries = duplicate_entries or []
    method = "exact" if exact else "projection"
    if reverts is None and not isinstance(rows, HeldRows):  # held rows carry them already
        rows = with_expectations(rows)
    prices: dict[int, AccessPrice] = {}
    for _ in range(PRICING_PASSES):
        if not (
            rows.has_flips() if isinstance(rows, HeldRows) else any(not r.excluded for r in rows)
        ):
            return plan_report(
                None, "empty", planner, reason, scope, None, rows, {}, duplicate_entries,
                pricing=method,
            )  # fmt: skip
        pricing = price(rows, progress, stamps=stamps, exact=exact)
        prices = pricing.prices
        if not pricing.unstable:
            break
        if insist:
            shown = ", ".join(
                f"work {pk} would become {status}"
                for pk, status in sorted(pricing.unstable.items())[:10]
            )
            raise LedgerError(
                f"the host's recompute would not keep {len(pricing.unstable)} planned works as "
                f"planned ({shown}); fix or leave them out of the list"
            )
        rows = _leave_out(rows, pricing.unstable)
    else:
        raise LedgerError("pricing did not settle; re-plan")
    return _store_plan(
        planner,
        rows,
        prices,
        reason=reason,
        actor=actor,
        ticket=ticket,
        scope=scope,
        duplicate_entries=duplicate_entries,
        pricing=method,
        order_dependent=pricing.order_dependent,
        reverts=reverts,
    )


def _over_cap_options(
    uuids: list[str], exclude_work_ids: Iterable[int], include_paid: bool, skip_suspended: bool
) -> OverCapOptions:
    return OverCapOptions(
        opportunity_ids=_opportunity_ids(uuids),
        exclude_work_ids=_check_work_ids(exclude_work_ids),
        include_paid=include_paid,
        skip_suspended=skip_suspended,
    )


def plan_over_cap(
    opportunity_ids: Iterable[str],
    reason: str,
    operator: str | None = None,
    exclude_work_ids: Iterable[int] = (),
    include_paid: bool = False,
    skip_suspended: bool = False,
    ticket: str = "",
    progress: Progress | None = None,
    exact: bool = False,
) -> PlanReport:
    """Plan the over-cap correction of explicit opportunities and price it (``exact``: with
    the host's own code, see :mod:`ledger.pricing`)."""
    reason = _require_reason(reason)
    ticket = _check_ticket(ticket)
    actor = people.actor(operator, people.PLAN)
    uuids = [str(u) for u in opportunity_ids]
    opts = _over_cap_options(uuids, exclude_work_ids, include_paid, skip_suspended)
    rows = over_cap_rows(opts)
    scope = {
        "opportunities": sorted(str(uuid.UUID(u)) for u in uuids),
        "exclude_work_ids": sorted(opts.exclude_work_ids),
        "include_paid": include_paid,
        "skip_suspended": skip_suspended,
    }
    return _priced_plan(
        Planner.over_cap, rows, reason, actor, ticket, scope, exact=exact, progress=progress
    )


def scan_over_cap() -> ScanReport:
    """Where the over-cap rule would apply across every opportunity. Creates no batch."""
    return scan_report(over_cap_rows(OverCapOptions(opportunity_ids=None)))


def plan_visits(
    reason: str,
    xform_ids: list[str] | None = None,
    visit_ids: list[int] | None = None,
    to_status: str = "over_limit",
    expand: bool = False,
    operator: str | None = None,
    ticket: str = "",
    progress: Progress | None = None,
    exact: bool = False,
) -> PlanReport:
    """Plan a targeted fix of listed visits (and their completed works) and price it (``exact``:
    with the host's own code, see :mod:`ledger.pricing`)."""
    reason = _require_reason(reason)
    ticket = _check_ticket(ticket)
    actor = people.actor(operator, people.PLAN)
    opts = VisitListOptions(
        xform_ids=xform_ids, visit_ids=visit_ids, to_status=to_status, expand=expand
    )
    duplicates = _duplicate_entries(xform_ids if xform_ids is not None else visit_ids or [])
    scope = {
        "xform_ids": len(xform_ids or []),
        "visit_ids": len(visit_ids or []),
        "to_status": to_status,
        "expand": expand,
    }
    if exact:  # the host's own code needs the rows in Python
        return _priced_plan(
            Planner.visit_list, plan_visit_list(opts), reason, actor, ticket, scope, duplicates,
            insist=True, exact=True, progress=progress,
        )  # fmt: skip
    with staged_visit_list(opts) as rows:  # the database holds the rows
        return _priced_plan(
            Planner.visit_list, rows, reason, actor, ticket, scope, duplicates, insist=True,
            progress=progress,
        )  # fmt: skip


def _duplicate_entries(entries: Iterable) -> list[str]:
    """The entries a list names more than once, as text, sorted (the list's own text is
    freed on return, not held while the plan is built)."""
    counts = Counter(str(entry) for entry in entries)
    return sorted(entry for entry, n in counts.items() if n > 1)


def discard_batch(batch_id: str, operator: str | None = None) -> CorrectionBatch:
    actor = people.actor(operator, people.PLAN)
    with transaction.atomic():
        batch = _get_batch(batch_id, lock=True)
        if batch.state != BatchState.planned:
            raise WrongState(
                f"batch {batch.pk} is {batch.state}; only a planned batch can be discarded"
            )
        batch.state = BatchState.discarded
        batch.discarded_at = db_now()
        batch.save(update_fields=["state", "discarded_at"])
        entries.record(batch, "discard", actor, {}, at=batch.discarded_at)
    return batch


MIN_DIGEST_PREFIX = 8


def approve_batch(batch_id: str, operator: str | None, plan_digest: str) -> CorrectionBatch:
    """Record that someone other than the planner reviewed this exact priced plan.

    ``plan_digest`` is the digest the reviewer saw (``show --batch``; at least its first eight
    characters): a plan that changed since cannot be approved by mistake.
    """
    actor = people.actor(operator, people.APPROVE)
    seen = (plan_digest or "").strip().lower()
    if len(seen) < MIN_DIGEST_PREFIX or any(c not in "0123456789abcdef" for c in seen):
        raise LedgerError(
            f"--plan-digest takes at least {MIN_DIGEST_PREFIX} hex characters of the digest "
            "shown with the priced plan"
        )
    with transaction.atomic():
        batch = _get_batch(batch_id, lock=True)
        if batch.state != BatchState.planned:
            raise WrongState(f"batch {batch.pk} is {batch.state}; only a planned batch is approved")
        if batch.approved_by:
            raise WrongState(f"batch {batch.pk} was approved by {batch.approved_by} already")
        if actor.username == batch.planned_by:
            raise people.NotAllowed(
                f"{actor.username} planned batch {batch.pk}; someone else must approve it"
            )
        if not batch.plan_digest.startswith(seen):
            raise WrongState(
                f"batch {batch.pk}'s plan digest is {batch.plan_digest[:12]}…, not {seen}: "
                "review the priced plan again (corrections show --batch ID)"
            )
        batch.approved_by = actor.username
        batch.approved_at = db_now()
        batch.save(update_fields=["approved_by", "approved_at"])
        entries.record(
            batch, "approve", actor, {"plan_digest": batch.plan_digest}, at=batch.approved_at
        )
    return batch


def _write(fn: Callable[[list], T], *, what: str, progress: Progress | None) -> T:
    """Run ``fn(releases)`` as one transaction, retrying while live traffic holds what it needs.

    Outside any transaction (the normal case) each attempt is a transaction of its own and a
    busy row, a busy accrual lock, a deadlock or a serialization failure rolls it back and
    retries after a pause (:mod:`ledger.retry`). Inside a caller's transaction
    (``ATOMIC_REQUESTS``, a task wrapper, a test case) each attempt is a savepoint: that works
    when the host's accrual locks end with the transaction (PostgreSQL advisory locks), and is
    refused when they outlive it (a Redis lock could neither be released at the caller's
    rollback nor retaken by the recompute that follows in the same transaction).
    """
    nested = connection.in_atomic_block
    if nested:
        lock = host.access_lock()
        if lock is not None and not getattr(lock, "transaction_scoped", False):
            raise LedgerError(
                f"{what} cannot run inside the caller's transaction: the host's accrual locks "
                f"({conf.get('ACCESS_LOCK')}) outlive it; call it outside transaction.atomic() "
                "(a non-atomic view, a task without a transaction wrapper)"
            )

    def attempt() -> T:
        releases: list[Callable[[], None]] = []
        try:
            with transaction.atomic():
                return fn(releases)
        except DatabaseError as error:
            if nested and sqlstate(error) == SERIALIZATION_FAILURE:
                raise LedgerError(
                    f"{what}: the ledger moved since the caller's transaction began (repeatable "
                    "read); run it in a transaction of its own"
                ) from error
            raise
        finally:
            for release in releases:
                release()

    return with_backoff(
        attempt, deadline_seconds=conf.get("RETRY_SECONDS"), progress=progress, what=what
    )


def _auto_anchor(report: RunReport) -> None:
    """Anchor the chain head after a projection when a key and an anchor log are configured.

    The projection has committed: a segment the witness refuses to sign (or a key it refuses
    to sign with) is ``anchor_problem`` on the report, never raised. Where the application
    holds no key — the witness runs apart, under its own role — nothing is anchored here.
    """
    from ledger import anchors

    if not (anchors.configured() and conf.get("ANCHOR_LOG") and not connection.in_atomic_block):
        return
    try:
        report.anchor = anchors.encode(anchors.take())
    except LedgerError as error:
        report.anchor_problem = str(error)


def _mark_applied(batch: CorrectionBatch, actor: Actor, result) -> None:
    """The batch's apply columns and its chained apply entry, at the projection's time."""
    batch.state = BatchState.applied
    batch.applied_by = actor.username
    batch.applied_at = result.recorded_at
    batch.skipped_conflicts = to_builtins(result.skipped)
    batch.save(update_fields=["state", "applied_by", "applied_at", "skipped_conflicts"])
    last = batch.events.order_by("-id").values_list("id", "hash").first()
    entries.record(
        batch,
        "apply",
        actor,
        {
            "events": result.events,
            "last_event_id": last[0] if last else None,
            "last_event_hash": last[1] if last else None,
            "skipped": len(result.skipped),
            "skipped_sha256": entries.digest(batch.skipped_conflicts),
        },
        at=result.recorded_at,
    )


def _planned_rows(batch: CorrectionBatch) -> list[PlannedRow]:
    """The batch's planned changes in digest order, read a chunk at a time as plain tuples."""
    with sql_cursor(chunked=True) as cursor:
        cursor.execute(
            f"""SELECT {", ".join(PlannedRow._fields)} FROM {table(PlannedChange)} p
                WHERE batch_id = %s ORDER BY {digests.sql_order("p")}""",
            [batch.pk],
        )
        return [PlannedRow(*shared_strings(values, FEW_VALUED)) for values in chunks(cursor)]


def _stored_digest(batch: CorrectionBatch) -> str:
    """The batch's plan digest recomputed in the database from its planned changes."""
    with connection.cursor() as cursor:
        cursor.execute(
            digests.sql_of_rows(f"SELECT * FROM {table(PlannedChange)} WHERE batch_id = %s"),
            [batch.pk],
        )
        return cursor.fetchone()[0]


def _refuse_if_nothing_written(result, what: str) -> None:
    """A projection that skipped every unit it had is refused, not recorded as done."""
    if not result.events:
        raise ConflictError(f"every unit of {what} conflicts", result.skipped)


def _check_appliable(batch: CorrectionBatch) -> None:
    if batch.state != BatchState.planned:
        raise WrongState(f"batch {batch.pk} is {batch.state}; only a planned batch can be applied")
    if conf.get("REQUIRE_APPROVAL") and not batch.approved_by:
        raise WrongState(
            f"batch {batch.pk} has not been approved: a reviewer other than "
            f"{batch.planned_by} runs corrections approve --batch {batch.pk} "
            "--operator USERNAME --plan-digest DIGEST"
        )
    if batch.digest_format != digests.CURRENT_FORMAT:
        raise WrongState(
            f"batch {batch.pk} was planned with plan digest format {batch.digest_format}, "
            "which does not cover every column apply uses; plan it again"
        )


def apply_batch(
    batch_id: str,
    operator: str | None = None,
    skip_conflicts: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Project a planned batch, then recompute the accruals of every access it touched.

    Everything the reviewed plan relied on is re-checked under the projection's locks
    (:mod:`ledger.assumptions`). A planned undo batch undoes the batch it reverts. Once the
    projection has committed the report says so, whatever happens to the recompute after it.
    """
    actor = people.actor(operator, people.APPLY)

    def run(releases: list) -> tuple[RunReport, str | None]:
        batch = _get_batch(batch_id, lock=True)
        _check_appliable(batch)
        if _stored_digest(batch) != batch.plan_digest:
            raise WrongState(
                f"batch {batch.pk}: its planned changes no longer match its plan digest "
                "(altered since it was planned); plan it again"
            )
        assumptions = Assumptions.of(batch)
        if batch.planner == Planner.undo:
            original = _get_batch(str(batch.reverts_id), lock=True)
            _check_undoable(original, planned_undo=batch)
            report = _project_undo(batch, original, actor, skip_conflicts, releases, assumptions)
            return report, str(original.pk)
        projected = {
            a["access_id"]: a["projected_accrual"]
            for a in batch.summary.get("plan", {}).get("accesses", [])
        }
        result = project(
            batch,
            reason=batch.reason,
            skip_conflicts=skip_conflicts,
            projected_accruals=projected,
            releases=releases,
            assumptions=assumptions,
        )
        _refuse_if_nothing_written(result, f"batch {batch.pk}")
        _mark_applied(batch, actor, result)
        report = RunReport(
            batch=str(batch.pk),
            state=BatchState.applied,
            action="apply",
            events=result.events,
            visits=result.visits,
            works=result.works,
            skipped_conflicts=result.skipped,
        )
        return report, None

    report, original = _write(run, what=f"apply of batch {batch_id}", progress=progress)
    return _after_commit(report, progress, original_batch=original)


def _check_undoable(original: CorrectionBatch, planned_undo: CorrectionBatch | None = None) -> None:
    """An applied batch can be undone, by one undo at a time."""
    if original.planner == Planner.undo:
        raise WrongState(
            f"batch {original.pk} is itself an undo; plan the correction again instead"
        )
    if original.state not in (BatchState.applied, BatchState.partially_undone):
        raise WrongState(
            f"batch {original.pk} is {original.state}; only an applied batch can be undone"
        )
    other = (
        CorrectionBatch.objects.filter(reverts=original, state=BatchState.planned)
        .exclude(pk=planned_undo.pk if planned_undo else None)
        .values_list("pk", flat=True)
        .first()
    )
    if other:
        raise WrongState(
            f"batch {original.pk} already has a planned undo, batch {other}: apply or discard "
            "it first"
        )


def _undo_rows_sql(extra: str = "") -> str:
    """The inverse of each of a batch's events not inverted yet, as planned rows (columns as a
    planned change's, then ``extra``; ``%s`` the batch): each restores what its event overwrote
    and expects that event (``prev_event_id``) to be its entity's latest still in force, and
    the visits it recorded (``members``); with the unit's payment state and suspension now."""
    events = table(CorrectionEvent)
    return f"""
        SELECT e.entity_kind, e.entity_id, e.completed_work_id, e.opportunity_id,
               e.access_id, e.xform_id, e.to_status AS from_status, e.from_status AS to_status,
               '' AS excluded, COALESCE(a.suspended, false) AS suspended,
               e.id AS prev_event_id, e.members,
               w.payment_date IS NOT NULL AS paid, w.invoice_id IS NOT NULL AS invoiced{extra}
        FROM {events} e
        LEFT JOIN {table(host.CompletedWork)} w ON w.id = e.completed_work_id
        LEFT JOIN {table(host.OpportunityAccess)} a ON a.id = e.access_id
        WHERE e.batch_id = %s
          AND NOT EXISTS (SELECT 1 FROM {events} i WHERE i.inverts_id = e.id)"""


_SHARED_IDS = tuple(PlannedRow._fields.index(name) for name in ("opportunity_id", "access_id"))


def _undo_rows(original: CorrectionBatch) -> tuple[list[PlannedRow], Stamps]:
    """:func:`_undo_rows_sql` read as planned rows, in digest order (to price an undo plan),
    and the ``status_modified_date`` each row restores (what its event overwrote)."""
    rows: list[PlannedRow] = []
    stamps = Stamps()
    share = {}.setdefault  # one object per opportunity and access, not one per row
    with sql_cursor(chunked=True) as cursor:
        cursor.execute(
            f"""{_undo_rows_sql(", e.prior_status_modified_date")}
                ORDER BY e.entity_kind COLLATE "C", e.entity_id""",
            [original.pk],
        )
        for values in chunks(cursor):
            row = list(shared_strings(values[:-1], FEW_VALUED))
            for i in _SHARED_IDS:
                row[i] = share(row[i], row[i])
            rows.append(PlannedRow._make(row))
            stamps.add(row[0], row[1], values[-1])
    return rows, stamps


def plan_undo(
    batch_id: str,
    reason: str,
    operator: str | None = None,
    ticket: str = "",
    progress: Progress | None = None,
    exact: bool = False,
) -> PlanReport:
    """Plan the undo of an applied batch as a priced batch of its own, to be approved by
    someone else and applied like any plan: undoing gives the pay back, so it moves money
    (``exact``: priced with the host's own code, see :mod:`ledger.pricing`).

    Each row inverts one of the batch's events not inverted yet. A unit the host's recompute
    would not keep restored is left out (``would_not_hold``); the batch is then partially
    undone by it, and can be undone again later.
    """
    reason = _require_reason(reason)
    ticket = _check_ticket(ticket)
    actor = people.actor(operator, people.PLAN)
    original = _get_batch(batch_id)
    _check_undoable(original)
    if exact:  # the host's own code needs the rows and their dates in Python
        rows, stamps = _undo_rows(original)
    else:  # the database holds them: an undo of 500,000 flips is not read into memory
        rows, stamps = (
            HeldRows(_undo_rows_sql(", e.prior_status_modified_date AS stamp"), [original.pk]),
            None,
        )
    if not (rows.has_flips() if isinstance(rows, HeldRows) else rows):
        raise WrongState(f"batch {original.pk} has no event left to undo")
    report = _priced_plan(
        Planner.undo, rows, reason, actor, ticket, {"reverts": str(original.pk)},
        progress=progress, reverts=original, exact=exact, stamps=stamps,
    )  # fmt: skip
    if report.batch is None:
        raise WrongState(
            f"batch {original.pk}: the host's recompute would keep none of its units restored; "
            "nothing to undo"
        )
    return report


def _project_undo(
    undo: CorrectionBatch,
    original: CorrectionBatch,
    actor: Actor,
    skip_conflicts: bool,
    releases: list,
    assumptions: Assumptions | None = None,
) -> RunReport:
    """Project an undo batch's planned inverse flips and move the batch it reverts along.

    Every unit the undo was planned for (left-out ones included) and not inverted now leaves
    the original ``partially_undone``, to be undone again later. The original's row is locked
    by the caller, so no other undo of it runs meanwhile.
    """
    result = project(
        undo,
        reason=undo.reason,
        skip_conflicts=skip_conflicts,
        releases=releases,
        undo=True,
        assumptions=assumptions,
    )
    _refuse_if_nothing_written(result, f"the undo of batch {original.pk}")
    _mark_applied(undo, actor, result)
    if PlannedChange.objects.filter(batch=undo).count() == result.events:
        original.state = BatchState.undone
        original.undone_at = result.recorded_at
        original.save(update_fields=["state", "undone_at"])
    elif original.state == BatchState.applied:
        original.state = BatchState.partially_undone
        original.save(update_fields=["state"])
    entries.record(
        original,
        "undo",
        actor,
        {"by_batch": str(undo.pk), "events": result.events, "state": original.state},
        at=result.recorded_at,
    )
    return RunReport(
        batch=str(undo.pk),
        state=BatchState.applied,
        action="undo",
        reverts=str(original.pk),
        reverted_state=original.state,
        events=result.events,
        visits=result.visits,
        works=result.works,
        skipped_conflicts=result.skipped,
    )


def undo_batch(
    batch_id: str,
    reason: str,
    operator: str | None = None,
    skip_conflicts: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Undo an applied batch in one step: plan and project its inverse events as a new batch.

    Only for deployments without approval (``LEDGER_REQUIRE_APPROVAL = False``); with it on an
    undo is planned (:func:`plan_undo`), approved by someone else and applied like any batch.
    Only events not inverted yet are inverted, each expected to be its entity's latest ledger
    event still in force. Skipped units (``skip_conflicts``) stay with the original batch,
    which is then ``partially_undone`` and can be undone again later; an undo that would skip
    every unit is refused.
    """
    reason = _require_reason(reason)
    actor = people.actor(operator, people.APPLY)
    if conf.get("REQUIRE_APPROVAL"):
        raise WrongState(
            "undoing a batch moves money, so it needs a second person's approval "
            "(LEDGER_REQUIRE_APPROVAL): plan it with corrections plan undo --batch "
            f"{batch_id} --reason TEXT, have someone else approve it, then apply it"
        )

    def run(releases: list) -> tuple[RunReport, str]:
        original = _get_batch(batch_id, lock=True)
        _check_undoable(original)
        rows_sql = _undo_rows_sql()
        with connection.cursor() as cursor:
            cursor.execute(digests.sql_of_rows(rows_sql), [original.pk])
            (digest,) = cursor.fetchone()
        undo = CorrectionBatch.objects.create(
            planner=Planner.undo,
            reason=reason,
            planned_by=actor.username,
            plan_digest=digest,
            reverts=original,
            scope={"reverts": str(original.pk)},
        )
        columns = ", ".join(PlannedRow._fields)
        with connection.cursor() as cursor:
            # The undo's planned changes, like any batch's: what it expects and restores.
            cursor.execute(
                f"""INSERT INTO {table(PlannedChange)} (batch_id, {columns})
                    SELECT %s, {columns} FROM ({rows_sql}) r""",
                [undo.pk, original.pk],
            )
            if not cursor.rowcount:
                raise WrongState(f"batch {original.pk} has no event left to undo")
        entries.record(undo, "plan", actor, entries.plan_details(undo))
        report = _project_undo(undo, original, actor, skip_conflicts, releases)
        return report, str(original.pk)

    report, original = _write(run, what=f"undo of batch {batch_id}", progress=progress)
    return _after_commit(report, progress, original_batch=original)


def _after_commit(
    report: RunReport, progress: Progress | None, original_batch: str | None = None
) -> RunReport:
    """Anchor and recompute (or queue the recompute) after a committed projection, and report
    it as committed.

    Nothing here can turn a committed apply or undo into a refusal: what fails is a finding,
    and accesses whose recompute is still pending are listed (``recompute --pending``
    finishes them).
    """
    try:
        _auto_anchor(report)
    except Exception as error:  # noqa: BLE001 - committed: report, never raise
        report.findings.append(
            f"the projection committed but anchoring it failed ({error}); run corrections anchor"
        )
    if recomputes.mode() == recomputes.CELERY:
        return _queue_recomputes(report, progress, original_batch)
    if progress:
        what = "inverse events" if report.action == "undo" else "events"
        progress(f"projected {report.events} {what}; recomputing accruals")
    try:
        report.pending = recompute(batch_id=report.batch, progress=progress).pending
    except Exception as error:  # noqa: BLE001 - committed: report, never raise
        report.findings.append(
            f"the projection committed but the recompute stopped ({type(error).__name__}: "
            f"{error}); run corrections recompute --pending"
        )
        return report
    return _conclude(report, original_batch)


def _queue_recomputes(
    report: RunReport, progress: Progress | None, original_batch: str | None
) -> RunReport:
    """Hand the batch's recomputes to the Celery workers once the projection has committed.

    Inside a caller's transaction they are queued when it commits (the workers could not see
    the rows before); otherwise at once, and a queue that cannot be reached is a finding.
    """
    report.recompute = "queued"
    if progress:
        progress(f"projected {report.events} events; queueing the accrual recomputes")

    def send() -> None:
        recomputes.enqueue(report.batch)

    try:
        if connection.in_atomic_block:
            transaction.on_commit(send, robust=True)
        else:
            send()
    except Exception as error:  # noqa: BLE001 - committed: report, never raise
        report.findings.append(
            f"the projection committed but its recomputes could not be queued "
            f"({type(error).__name__}: {error}); run corrections recompute --batch {report.batch}"
        )
    return _conclude(report, original_batch)


def _conclude(report: RunReport, original_batch: str | None) -> RunReport:
    """The report's view of the recomputes as they stand: per access before, projected and
    after; what is still pending (and, when queued, in the queue); for an undo, accesses whose
    accrual did not come back."""
    try:
        report.accesses = outcomes(report.batch, original_batch=original_batch)
        if report.recompute == "queued":
            now = recomputes.progress(report.batch)
            if connection.in_atomic_block:  # queued when the caller's transaction commits
                report.queued_recomputes = now.pending
            else:
                report.queued_recomputes = now.queued
                report.pending = _pending_rows(report.batch)
    except Exception as error:  # noqa: BLE001 - committed: report, never raise
        report.findings.append(
            f"the projection committed but reading its recomputes failed "
            f"({type(error).__name__}: {error}); see corrections show --batch {report.batch}"
        )
        return report
    report.pending_recomputes = sum(1 for a in report.accesses if a.state == "pending")
    if original_batch:
        report.findings += [
            f"access {a.access_id}: accrual {a.accrual_after} after the undo, "
            f"{a.accrual_before_original} before the batch (something else moved it since)"
            for a in report.accesses
            if a.matches is False and a.state != "pending"
        ]
    return report


def _pending_rows(batch_id: str) -> list[PendingRecompute]:
    """The batch's pending recomputes that are no longer queued, with the problem recorded."""
    return [
        PendingRecompute(batch=str(batch), access_id=access_id, reason=error or "not queued")
        for batch, access_id, error in AccrualRecompute.objects.filter(
            batch_id=batch_id, state=RecomputeState.pending, queued_at__isnull=True
        )
        .order_by("access_id")
        .values_list("batch_id", "access_id", "last_error")
    ]


WAIT_POLL_SECONDS = 0.5


def wait_for_recomputes(
    report: RunReport,
    progress: Callable[[recomputes.Progress], None] | None = None,
    idle_seconds: float | None = None,
) -> RunReport:
    """Wait for the recomputes a committed apply or undo queued, then report them.

    The wait ends when every one is done; when none is left in the queue (what is left failed,
    or stayed busy past ``LEDGER_RETRY_SECONDS``: listed in ``report.pending``); or when none
    has finished for ``idle_seconds`` (default ``LEDGER_RETRY_SECONDS``: no worker is running,
    or the queue lost its messages). Recomputes that ran inline have nothing to wait for.
    """
    if report.recompute != "queued":
        return report
    idle = conf.get("RETRY_SECONDS") if idle_seconds is None else idle_seconds
    last_done, changed = -1, time.monotonic()
    while True:
        now = recomputes.progress(report.batch)
        if progress:
            progress(now)
        if not now.pending or not now.queued:
            break
        if now.done != last_done:
            last_done, changed = now.done, time.monotonic()
        elif time.monotonic() - changed >= idle:
            break
        time.sleep(WAIT_POLL_SECONDS)
    report = _conclude(report, report.reverts)
    if report.pending_recomputes and not report.pending:  # still queued: the wait gave up
        report.pending = [
            PendingRecompute(
                batch=report.batch,
                access_id=a.access_id,
                reason=f"queued; no recompute finished for {idle:g} s",
            )
            for a in report.accesses
            if a.state == "pending"
        ]
    return report


class RecomputeRun(NamedTuple):
    done: int  # accesses recomputed and marked done
    pending: list[PendingRecompute]  # what is still pending, by access, with why


def recompute(batch_id: str | None = None, progress: Progress | None = None) -> RecomputeRun:
    """Finish pending accrual recomputes (of one batch, or all), in this process.

    Each access is recomputed by the host's ``update_payment_accrued_for_user`` with
    ``incremental=False`` (incremental mode skips works accrued before and since corrected)
    and its pending rows are marked done in the same transaction of its own
    (:func:`ledger.recomputes.finish`), so an interruption loses nothing but time. One attempt
    per access per round: an access that live traffic holds (or whose lock backend is
    unreachable) is passed over and tried again after the others, with back-off, until
    ``LEDGER_RETRY_SECONDS``; an access whose recompute fails is reported and left pending.
    One worker never holds up the others' accruals.
    """
    pending = AccrualRecompute.objects.filter(state=RecomputeState.pending)
    batch = None
    if batch_id is not None:
        batch = str(_get_batch(batch_id).pk)
        pending = pending.filter(batch_id=batch)
    rows: dict[int, list[str]] = {}
    for access_id, row_batch in pending.order_by("access_id", "id").values_list(
        "access_id", "batch_id"
    ):
        rows.setdefault(access_id, []).append(str(row_batch))
    total, done = len(rows), 0
    why: dict[int, str] = {}
    left = sorted(rows)
    deadline = time.monotonic() + conf.get("RETRY_SECONDS")
    pause, shown = FIRST_PAUSE, time.monotonic()
    while left:
        busy = []
        for access_id in left:
            outcome = recomputes.finish(access_id, batch)
            if outcome.state in ("busy", "failed"):
                why[access_id] = outcome.reason
                if outcome.state == "busy":
                    busy.append(access_id)
                continue
            done += 1
            why.pop(access_id, None)
            if progress and (time.monotonic() - shown >= PROGRESS_SECONDS or done == total):
                progress(f"recomputed {done}/{total} accesses")
                shown = time.monotonic()
        left_time = deadline - time.monotonic()
        if not busy or left_time <= 0:
            break
        wait = min(pause * (0.5 + random.random()), left_time)
        if progress:
            progress(
                f"{len(busy)} accesses busy (first: {busy[0]}, {why[busy[0]]}); "
                f"trying them again in {wait:.2f} s"
            )
        time.sleep(wait)
        pause = min(pause * 2, LONGEST_PAUSE)
        left = busy
    return RecomputeRun(
        done,
        [
            PendingRecompute(batch=row_batch, access_id=access_id, reason=reason)
            for access_id, reason in sorted(why.items())
            for row_batch in rows[access_id]
        ],
    )


def outcomes(batch_id: str, original_batch: str | None = None) -> list[AccessOutcome]:
    """Per access: accrual before the projection, projected, and after the recompute."""
    before_original: dict[int, int] = {}
    if original_batch:
        before_original = dict(
            AccrualRecompute.objects.filter(batch_id=original_batch).values_list(
                "access_id", "accrual_before"
            )
        )
    result = []
    for r in AccrualRecompute.objects.filter(batch_id=batch_id).order_by("access_id"):
        outcome = AccessOutcome(
            access_id=r.access_id,
            opportunity_id=r.opportunity_id,
            accrual_before=r.accrual_before,
            projected_accrual=r.projected_after,
            accrual_after=r.accrual_after,
            state=r.state,
        )
        if original_batch:
            outcome.accrual_before_original = before_original.get(r.access_id)
            outcome.matches = (
                r.accrual_after is not None and r.accrual_after == outcome.accrual_before_original
            )
        elif r.projected_after is not None and r.accrual_after is not None:
            outcome.matches = r.accrual_after == r.projected_after
        result.append(outcome)
    return result


def recompute_report(batch_id: str | None, progress: Progress | None = None) -> RunReport:
    run = recompute(batch_id=batch_id, progress=progress)
    still = AccrualRecompute.objects.filter(state=RecomputeState.pending)
    if batch_id:
        still = still.filter(batch_id=_get_batch(batch_id).pk)
    pending = still.count()
    return RunReport(
        batch=batch_id or "",
        state="done" if not pending else "pending",
        action="recompute",
        accesses=outcomes(batch_id) if batch_id else [],
        recomputed=run.done,
        pending_recomputes=pending,
        pending=run.pending,
    )
