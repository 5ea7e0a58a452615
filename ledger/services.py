"""Plan, apply, undo and recompute: the only entry points that change anything.

Interfaces (the ``corrections`` command, admin, test helpers) call these functions; planners
only read, and :mod:`ledger.projector` is the only writer of host statuses.
"""

from __future__ import annotations

import getpass
import uuid
from collections import Counter
from collections.abc import Callable, Iterable

from django.db import OperationalError, transaction
from django.utils import timezone

from ledger import host
from ledger.errors import LedgerError, NotFound, WrongState
from ledger.models import (
    AccrualRecompute,
    BatchState,
    CorrectionBatch,
    PlannedChange,
    Planner,
    RecomputeState,
)
from ledger.planners.over_cap import OverCapOptions, resolve_opportunities
from ledger.planners.over_cap import plan_over_cap as over_cap_rows
from ledger.planners.rows import PlannedRow, plan_digest
from ledger.planners.visit_list import VisitListOptions, plan_visit_list
from ledger.pricing import AccessPrice, price
from ledger.projector import Flip, project
from ledger.reports import plan_report, scan_report
from ledger.schema import AccessOutcome, PlanReport, RunReport, ScanReport, to_builtins
from ledger.sql import insert_rows

Progress = Callable[[str], None]
DEADLOCK_RETRIES = 3


def default_operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def _require_reason(reason: str | None) -> str:
    if not reason or not reason.strip():
        raise LedgerError("a reason is required (--reason TEXT)")
    return reason.strip()


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
    rows: list[PlannedRow],
    prices: dict[int, AccessPrice],
    *,
    reason: str,
    operator: str,
    ticket: str,
    scope: dict,
    duplicate_entries: list[str],
) -> PlanReport:
    digest = plan_digest(rows)
    batch_id = uuid.uuid4()
    report = plan_report(
        str(batch_id), BatchState.planned, planner, reason, scope, digest, rows, prices,
        duplicate_entries,
    )  # fmt: skip
    with transaction.atomic():
        batch = CorrectionBatch.objects.create(
            id=batch_id,
            planner=planner,
            reason=reason,
            ticket=ticket,
            planned_by=operator,
            plan_digest=digest,
            scope=scope,
            summary={"plan": to_builtins(report)},
        )
        insert_rows(
            PlannedChange,
            ("batch_id", *PlannedRow._fields),
            ((batch.pk, *row) for row in rows),
        )
    return report


def _priced_plan(
    planner: str,
    rows: list[PlannedRow],
    reason: str,
    operator: str | None,
    ticket: str,
    scope: dict,
    duplicate_entries: list[str] | None = None,
) -> PlanReport:
    """Price and store the rows as a planned batch; with nothing to flip, report and store none."""
    duplicate_entries = duplicate_entries or []
    if not any(not r.excluded for r in rows):
        return plan_report(None, "empty", planner, reason, scope, None, rows, {}, duplicate_entries)
    return _store_plan(
        planner,
        rows,
        price(rows),
        reason=reason,
        operator=operator or default_operator(),
        ticket=ticket,
        scope=scope,
        duplicate_entries=duplicate_entries,
    )


def plan_over_cap(
    opportunity_ids: Iterable[str],
    reason: str,
    operator: str | None = None,
    exclude_work_ids: Iterable[int] = (),
    include_paid: bool = False,
    skip_suspended: bool = False,
    ticket: str = "",
) -> PlanReport:
    """Plan the over-cap correction of explicit opportunities and price it."""
    reason = _require_reason(reason)
    uuids = [str(u) for u in opportunity_ids]
    opts = OverCapOptions(
        opportunity_ids=_opportunity_ids(uuids),
        exclude_work_ids=_check_work_ids(exclude_work_ids),
        include_paid=include_paid,
        skip_suspended=skip_suspended,
    )
    rows = over_cap_rows(opts)
    scope = {
        "opportunities": sorted(str(uuid.UUID(u)) for u in uuids),
        "exclude_work_ids": sorted(opts.exclude_work_ids),
        "include_paid": include_paid,
        "skip_suspended": skip_suspended,
    }
    return _priced_plan(Planner.over_cap, rows, reason, operator, ticket, scope)


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
) -> PlanReport:
    """Plan a targeted fix of listed visits (and their completed works) and price it."""
    reason = _require_reason(reason)
    opts = VisitListOptions(
        xform_ids=xform_ids, visit_ids=visit_ids, to_status=to_status, expand=expand
    )
    rows = plan_visit_list(opts)
    named = [str(i) for i in (xform_ids if xform_ids is not None else visit_ids or [])]
    duplicates = sorted(entry for entry, n in Counter(named).items() if n > 1)
    scope = {
        "xform_ids": len(xform_ids or []),
        "visit_ids": len(visit_ids or []),
        "to_status": to_status,
        "expand": expand,
    }
    return _priced_plan(Planner.visit_list, rows, reason, operator, ticket, scope, duplicates)


def discard_batch(batch_id: str, operator: str | None = None) -> CorrectionBatch:
    with transaction.atomic():
        batch = _get_batch(batch_id, lock=True)
        if batch.state != BatchState.planned:
            raise WrongState(
                f"batch {batch.pk} is {batch.state}; only a planned batch can be discarded"
            )
        batch.state = BatchState.discarded
        batch.discarded_at = timezone.now()
        batch.save(update_fields=["state", "discarded_at"])
    return batch


def _with_deadlock_retry(fn):
    """Re-run a whole transaction the database aborted to break a deadlock with live writers.

    ``fn`` receives a list to which the projector adds the release of locks that outlive the
    transaction (the host's accrual locks); they are released here once it has ended.
    """
    for attempt in range(DEADLOCK_RETRIES):
        releases: list = []
        try:
            return fn(releases)
        except OperationalError as error:
            if "deadlock detected" not in str(error) or attempt == DEADLOCK_RETRIES - 1:
                raise
        finally:
            for release in releases:
                release()


def apply_batch(
    batch_id: str,
    operator: str | None = None,
    skip_conflicts: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Project a planned batch, then recompute the accruals of every access it touched."""
    operator = operator or default_operator()

    def run(releases: list) -> RunReport:
        with transaction.atomic():
            batch = _get_batch(batch_id, lock=True)
            if batch.state != BatchState.planned:
                raise WrongState(
                    f"batch {batch.pk} is {batch.state}; only a planned batch can be applied"
                )
            if batch.planner == Planner.undo:
                raise WrongState(f"batch {batch.pk} is an undo batch")
            rows = [
                PlannedRow(*values)
                for values in batch.changes.order_by("entity_kind", "entity_id")
                .values_list(*PlannedRow._fields)
                .iterator(chunk_size=10_000)
            ]
            if plan_digest(rows, presorted=True) != batch.plan_digest:
                raise LedgerError(f"batch {batch.pk}: planned changes do not match the plan digest")
            projected = {
                a["access_id"]: a["projected_accrual"]
                for a in batch.summary.get("plan", {}).get("accesses", [])
            }
            flips = [Flip(*r[:8]) for r in rows if not r.excluded]
            del rows
            result = project(
                batch,
                flips,
                reason=batch.reason,
                skip_conflicts=skip_conflicts,
                projected_accruals=projected,
                releases=releases,
            )
            batch.state = BatchState.applied
            batch.applied_by = operator
            batch.applied_at = timezone.now()
            batch.skipped_conflicts = to_builtins(result.skipped)
            batch.save(update_fields=["state", "applied_by", "applied_at", "skipped_conflicts"])
        return RunReport(
            batch=str(batch.pk),
            state=BatchState.applied,
            action="apply",
            events=result.events,
            visits=result.visits,
            works=result.works,
            skipped_conflicts=result.skipped,
        )

    report = _with_deadlock_retry(run)
    if progress:
        progress(f"projected {report.events} events; recomputing accruals")
    recompute(batch_id=report.batch, progress=progress)
    report.accesses = outcomes(report.batch)
    report.pending_recomputes = sum(1 for a in report.accesses if a.state == "pending")
    return report


def undo_batch(
    batch_id: str,
    reason: str,
    operator: str | None = None,
    skip_conflicts: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Append and project the inverse of an applied batch's events as a new batch."""
    reason = _require_reason(reason)
    operator = operator or default_operator()

    def run(releases: list) -> tuple[RunReport, CorrectionBatch]:
        with transaction.atomic():
            original = _get_batch(batch_id, lock=True)
            if original.planner == Planner.undo:
                raise WrongState(
                    f"batch {original.pk} is itself an undo; plan the correction again instead"
                )
            if original.state != BatchState.applied:
                raise WrongState(
                    f"batch {original.pk} is {original.state}; only an applied batch can be undone"
                )
            # Newest first, as plain tuples: the inverse of each event, restoring what it overwrote.
            flips = [
                Flip(kind, entity_id, work_id, opp_id, access_id, xform_id, to_status,
                     from_status, event_id, prior_modified)
                for (event_id, kind, entity_id, work_id, opp_id, access_id, xform_id,
                     from_status, to_status, prior_modified)
                in original.events.order_by("-id").values_list(
                    "id", "entity_kind", "entity_id", "completed_work_id", "opportunity_id",
                    "access_id", "xform_id", "from_status", "to_status",
                    "prior_status_modified_date",
                ).iterator(chunk_size=10_000)
            ]  # fmt: skip
            digest = plan_digest(
                PlannedRow(f.entity_kind, f.entity_id, f.completed_work_id, f.opportunity_id,
                           f.access_id, f.xform_id, f.from_status, f.to_status, "", False)
                for f in flips
            )  # fmt: skip
            undo = CorrectionBatch.objects.create(
                planner=Planner.undo,
                reason=reason,
                planned_by=operator,
                plan_digest=digest,
                reverts=original,
                scope={"reverts": str(original.pk)},
            )
            result = project(
                undo, flips, reason=reason, skip_conflicts=skip_conflicts, releases=releases
            )
            now = timezone.now()
            undo.state = BatchState.applied
            undo.applied_by = operator
            undo.applied_at = now
            undo.skipped_conflicts = to_builtins(result.skipped)
            undo.save(update_fields=["state", "applied_by", "applied_at", "skipped_conflicts"])
            original.state = BatchState.undone
            original.undone_at = now
            original.save(update_fields=["state", "undone_at"])
        report = RunReport(
            batch=str(undo.pk),
            state=BatchState.applied,
            action="undo",
            reverts=str(original.pk),
            events=result.events,
            visits=result.visits,
            works=result.works,
            skipped_conflicts=result.skipped,
        )
        return report, original

    report, original = _with_deadlock_retry(run)
    if progress:
        progress(f"projected {report.events} inverse events; recomputing accruals")
    recompute(batch_id=report.batch, progress=progress)
    report.accesses = outcomes(report.batch, original_batch=str(original.pk))
    report.pending_recomputes = sum(1 for a in report.accesses if a.state == "pending")
    return report


def recompute(
    batch_id: str | None = None, progress: Progress | None = None, every: int = 100
) -> int:
    """Finish pending accrual recomputes (of one batch, or all); return how many were done.

    Each access is recomputed by the host's ``update_payment_accrued_for_user`` with
    ``incremental=False`` (incremental mode skips works accrued before and since corrected)
    and marked done in its own transaction, so an interruption loses nothing but time.
    """
    pending = AccrualRecompute.objects.filter(state=RecomputeState.pending)
    if batch_id is not None:
        pending = pending.filter(batch_id=_get_batch(batch_id).pk)
    rows = list(pending.order_by("access_id", "id").values_list("id", "access_id"))
    total = len(rows)
    for done, (row_id, access_id) in enumerate(rows, start=1):
        after = host.recompute_access(access_id)  # None: the access is gone
        AccrualRecompute.objects.filter(pk=row_id, state=RecomputeState.pending).update(
            state=RecomputeState.done, accrual_after=after, done_at=timezone.now()
        )
        if progress and (done % every == 0 or done == total):
            progress(f"recomputed {done}/{total} accesses")
    return total


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
    done = recompute(batch_id=batch_id, progress=progress)
    pending = AccrualRecompute.objects.filter(state=RecomputeState.pending).count()
    return RunReport(
        batch=batch_id or "",
        state="done" if not pending else "pending",
        action="recompute",
        accesses=outcomes(batch_id) if batch_id else [],
        recomputed=done,
        pending_recomputes=pending,
    )
