"""Plan, apply, undo and recompute: the only entry points that change anything.

Interfaces (the ``corrections`` command, admin, test helpers) call these functions; planners
only read, and :mod:`ledger.projector` is the only writer of host statuses.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TypeVar

from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now

from ledger import accruals, conf, digests, entries, host, people
from ledger.errors import LedgerError, NotFound, WrongState
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
from ledger.planners.over_cap import OverCapOptions, resolve_opportunities
from ledger.planners.over_cap import plan_over_cap as over_cap_rows
from ledger.planners.rows import FEW_VALUED, PlannedRow, plan_digest, with_expectations
from ledger.planners.visit_list import VisitListOptions, plan_visit_list
from ledger.pricing import AccessPrice, price
from ledger.projector import Flip, project
from ledger.reports import plan_report, scan_report
from ledger.retry import SERIALIZATION_FAILURE, sqlstate, with_backoff
from ledger.schema import AccessOutcome, PlanReport, RunReport, ScanReport, to_builtins
from ledger.sql import chunks, db_now, insert_rows, shared_strings, table
from ledger.sql import cursor as sql_cursor

Progress = Callable[[str], None]
T = TypeVar("T")
PRICING_PASSES = 3


class StalePlan(WrongState):
    """The rule that produced a plan no longer gives the same answer: re-plan."""


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
    rows: list[PlannedRow],
    prices: dict[int, AccessPrice],
    *,
    reason: str,
    actor: Actor,
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
            planned_by=actor.username,
            plan_digest=digest,
            scope=scope,
            summary={"plan": to_builtins(report)},
        )
        insert_rows(
            PlannedChange,
            ("batch_id", *PlannedRow._fields),
            ((batch.pk, *row) for row in rows),
        )
        entries.record(batch, "plan", actor, entries.plan_details(batch))
    return report


def _leave_out(rows: list[PlannedRow], unstable: dict[int, str]) -> list[PlannedRow]:
    """Exclude the units (a work with its visits) the host's recompute would not keep."""
    return [
        r._replace(excluded="would_not_hold")
        if not r.excluded and r.completed_work_id in unstable
        else r
        for r in rows
    ]


def _priced_plan(
    planner: str,
    rows: list[PlannedRow],
    reason: str,
    actor: Actor,
    ticket: str,
    scope: dict,
    duplicate_entries: list[str] | None = None,
    *,
    insist: bool = False,
    progress: Progress | None = None,
) -> PlanReport:
    """Price and store the rows as a planned batch; with nothing to flip, report and store none.

    A plan must hold after the host's own recompute: a planned work the recompute would move
    elsewhere (a rejected visit makes it rejected, say) is left out with reason
    ``would_not_hold`` and the rest re-priced — or, for a list that insists on every unit it
    names, the plan is refused.
    """
    duplicate_entries = duplicate_entries or []
    rows = with_expectations(rows)
    prices: dict[int, AccessPrice] = {}
    for _ in range(PRICING_PASSES):
        if not any(not r.excluded for r in rows):
            return plan_report(
                None, "empty", planner, reason, scope, None, rows, {}, duplicate_entries
            )
        pricing = price(rows, progress)
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
) -> PlanReport:
    """Plan the over-cap correction of explicit opportunities and price it."""
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
    return _priced_plan(Planner.over_cap, rows, reason, actor, ticket, scope, progress=progress)


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
) -> PlanReport:
    """Plan a targeted fix of listed visits (and their completed works) and price it."""
    reason = _require_reason(reason)
    ticket = _check_ticket(ticket)
    actor = people.actor(operator, people.PLAN)
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
    return _priced_plan(
        Planner.visit_list, rows, reason, actor, ticket, scope, duplicates,
        insist=True, progress=progress,
    )  # fmt: skip


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
        if batch.state != BatchState.planned or batch.planner == Planner.undo:
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


def _still_over_cap(batch: CorrectionBatch, rows: list[PlannedRow]) -> None:
    """Refuse an over-cap plan that its rule no longer produces.

    Another batch, or the host, may have changed which works rank past the cap since the plan
    (a work within the cap set over_limit moves the next one back within it). Applying then
    would leave a worker fewer live works than the cap.
    """
    scope = batch.scope
    fresh = over_cap_rows(
        OverCapOptions(
            opportunity_ids=sorted(resolve_opportunities(scope["opportunities"]).values()),
            exclude_work_ids=frozenset(scope.get("exclude_work_ids", [])),
            include_paid=scope.get("include_paid", False),
            skip_suspended=scope.get("skip_suspended", False),
        )
    )
    over = {r.entity_id for r in fresh if r.entity_kind == "completed_work"}
    planned = {r.entity_id for r in rows if r.entity_kind == "completed_work" and not r.excluded}
    gone = sorted(planned - over)
    if gone:
        shown = ", ".join(map(str, gone[:10])) + (" …" if len(gone) > 10 else "")
        raise StalePlan(
            f"batch {batch.pk} is stale: {len(gone)} planned works are no longer past their "
            f"cap (works {shown}); re-plan"
        )


def _auto_anchor(report: RunReport) -> None:
    """Anchor the chain head after a projection when a key and an anchor log are configured.

    The projection has committed: a segment the witness refuses to sign (or a key it refuses
    to sign with) is reported on the run, never raised. Where the application holds no key —
    the witness runs apart, under its own role — nothing is anchored here.
    """
    from ledger import anchors

    if anchors.configured() and conf.get("ANCHOR_LOG") and not connection.in_atomic_block:
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


def apply_batch(
    batch_id: str,
    operator: str | None = None,
    skip_conflicts: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Project a planned batch, then recompute the accruals of every access it touched."""
    actor = people.actor(operator, people.APPLY)

    def run(releases: list) -> RunReport:
        batch = _get_batch(batch_id, lock=True)
        if batch.state != BatchState.planned:
            raise WrongState(
                f"batch {batch.pk} is {batch.state}; only a planned batch can be applied"
            )
        if batch.planner == Planner.undo:
            raise WrongState(f"batch {batch.pk} is an undo batch")
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
        rows = _planned_rows(batch)
        if plan_digest(rows, presorted=True) != batch.plan_digest:
            raise WrongState(
                f"batch {batch.pk}: its planned changes no longer match its plan digest "
                "(altered since it was planned); plan it again"
            )
        if batch.planner == Planner.over_cap:
            _still_over_cap(batch, rows)
        projected = {
            a["access_id"]: a["projected_accrual"]
            for a in batch.summary.get("plan", {}).get("accesses", [])
        }
        flips = [
            Flip(r.entity_kind, r.entity_id, r.completed_work_id, r.opportunity_id, r.access_id,
                 r.xform_id, r.from_status, r.to_status, None, None, r.prev_event_id, r.members)
            for r in rows if not r.excluded
        ]  # fmt: skip
        del rows
        result = project(
            batch,
            flips,
            reason=batch.reason,
            skip_conflicts=skip_conflicts,
            projected_accruals=projected,
            releases=releases,
        )
        _mark_applied(batch, actor, result)
        return RunReport(
            batch=str(batch.pk),
            state=BatchState.applied,
            action="apply",
            events=result.events,
            visits=result.visits,
            works=result.works,
            skipped_conflicts=result.skipped,
        )

    report = _write(run, what=f"apply of batch {batch_id}", progress=progress)
    _auto_anchor(report)
    if progress:
        progress(f"projected {report.events} events; recomputing accruals")
    recompute(batch_id=report.batch, progress=progress)
    report.accesses = outcomes(report.batch)
    report.pending_recomputes = sum(1 for a in report.accesses if a.state == "pending")
    return report


def _inverse_flips(original: CorrectionBatch) -> list[Flip]:
    """The inverse of each of the batch's events not inverted yet, newest first: each restores
    what its event overwrote and expects that event to be its entity's latest still."""
    events = table(CorrectionEvent)
    with sql_cursor(chunked=True) as cursor:
        cursor.execute(
            f"""SELECT e.id, e.entity_kind, e.entity_id, e.completed_work_id, e.opportunity_id,
                       e.access_id, e.xform_id, e.from_status, e.to_status,
                       e.prior_status_modified_date, e.members
                FROM {events} e
                WHERE e.batch_id = %s
                  AND NOT EXISTS (SELECT 1 FROM {events} i WHERE i.inverts_id = e.id)
                ORDER BY e.id DESC""",
            [original.pk],
        )
        return [
            Flip(sys.intern(kind), entity_id, work_id, opp_id, access_id, xform_id,
                 sys.intern(to_status), sys.intern(from_status), event_id, prior_modified,
                 event_id, members)
            for (event_id, kind, entity_id, work_id, opp_id, access_id, xform_id,
                 from_status, to_status, prior_modified, members) in chunks(cursor)
        ]  # fmt: skip


def undo_batch(
    batch_id: str,
    reason: str,
    operator: str | None = None,
    skip_conflicts: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Append and project the inverse of an applied batch's events as a new batch.

    Only events not inverted yet are inverted, newest first, each expected to be its entity's
    latest ledger event still. Skipped units (``skip_conflicts``) stay with the original batch,
    which is then ``partially_undone`` and can be undone again later.
    """
    reason = _require_reason(reason)
    actor = people.actor(operator, people.APPLY)

    def run(releases: list) -> tuple[RunReport, CorrectionBatch]:
        original = _get_batch(batch_id, lock=True)
        if original.planner == Planner.undo:
            raise WrongState(
                f"batch {original.pk} is itself an undo; plan the correction again instead"
            )
        if original.state not in (BatchState.applied, BatchState.partially_undone):
            raise WrongState(
                f"batch {original.pk} is {original.state}; only an applied batch can be undone"
            )
        flips = _inverse_flips(original)
        digest = plan_digest(
            PlannedRow(f.entity_kind, f.entity_id, f.completed_work_id, f.opportunity_id,
                       f.access_id, f.xform_id, f.from_status, f.to_status, "", False,
                       f.prev_event_id, f.members)
            for f in flips
        )  # fmt: skip
        undo = CorrectionBatch.objects.create(
            planner=Planner.undo,
            reason=reason,
            planned_by=actor.username,
            plan_digest=digest,
            reverts=original,
            scope={"reverts": str(original.pk)},
        )
        entries.record(undo, "plan", actor, entries.plan_details(undo))
        result = project(
            undo, flips, reason=reason, skip_conflicts=skip_conflicts, releases=releases
        )
        _mark_applied(undo, actor, result)
        # The batch row is locked: no other undo of it can have run since the flips were read.
        left = len(flips) - result.events
        if left == 0:
            original.state = BatchState.undone
            original.undone_at = result.recorded_at
            original.save(update_fields=["state", "undone_at"])
        elif result.events:
            original.state = BatchState.partially_undone
            original.save(update_fields=["state"])
        if result.events or left == 0:
            entries.record(
                original,
                "undo",
                actor,
                {"by_batch": str(undo.pk), "events": result.events, "state": original.state},
                at=result.recorded_at,
            )
        report = RunReport(
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
        return report, original

    report, original = _write(run, what=f"undo of batch {batch_id}", progress=progress)
    _auto_anchor(report)
    if progress:
        progress(f"projected {report.events} inverse events; recomputing accruals")
    recompute(batch_id=report.batch, progress=progress)
    report.accesses = outcomes(report.batch, original_batch=str(original.pk))
    report.pending_recomputes = sum(1 for a in report.accesses if a.state == "pending")
    report.findings = [
        f"access {a.access_id}: accrual {a.accrual_after} after the undo, "
        f"{a.accrual_before_original} before the batch (something else moved it since)"
        for a in report.accesses
        if a.matches is False
    ]
    return report


def recompute(
    batch_id: str | None = None, progress: Progress | None = None, every: int = 100
) -> int:
    """Finish pending accrual recomputes (of one batch, or all); return how many were done.

    Each access is recomputed by the host's ``update_payment_accrued_for_user`` with
    ``incremental=False`` (incremental mode skips works accrued before and since corrected)
    and marked done in the same transaction of its own, so an interruption loses nothing but
    time; live traffic is waited out, never deadlocked with (:mod:`ledger.accruals`).
    """
    pending = AccrualRecompute.objects.filter(state=RecomputeState.pending)
    if batch_id is not None:
        pending = pending.filter(batch_id=_get_batch(batch_id).pk)
    rows = list(pending.order_by("access_id", "id").values_list("id", "access_id"))
    total = len(rows)
    for done, (row_id, access_id) in enumerate(rows, start=1):

        def mark_done(after: int | None, row_id: int = row_id) -> None:
            # None: the access is gone; in the recompute's own transaction, so a crash leaves
            # either both or neither.
            AccrualRecompute.objects.filter(pk=row_id, state=RecomputeState.pending).update(
                state=RecomputeState.done, accrual_after=after, done_at=Now()
            )

        accruals.recompute_access(access_id, then=mark_done, progress=progress)
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
