"""The targeted fix: an operator's list of visits (by xform id or visit id) and a target status.

A visit and its completed work are one unit — the host's recompute puts a work back to approved
while its visits are approved — so a list that names only some of a work's visits is refused,
naming the work and the visits missing, unless the operator asks to expand to whole works.
Unknown ids are an error naming them; nothing is planned. A named visit the planner will not
flip (a trial visit, or one that already has the target status) is kept as an excluded row
with its reason, so the plan accounts for every id it was given. A work's access is read from
the work itself: a visit's own ``opportunity_access`` is nullable in the host.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.host import (
    CompletedWork,
    CompletedWorkStatus,
    OpportunityAccess,
    UserVisit,
    VisitValidationStatus,
)
from ledger.models import EntityKind, ExclusionReason
from ledger.planners.rows import PlannedRow, fetch, stream, table
from ledger.sql import int_array, text_array

# Visit target → the status its completed work takes with it.
WORK_STATUS_FOR = {
    VisitValidationStatus.over_limit.value: CompletedWorkStatus.over_limit.value,
    VisitValidationStatus.approved.value: CompletedWorkStatus.approved.value,
    VisitValidationStatus.rejected.value: CompletedWorkStatus.rejected.value,
    VisitValidationStatus.pending.value: CompletedWorkStatus.pending.value,
}
NEVER_FLIPPED = (VisitValidationStatus.trial.value,)


@dataclass(frozen=True)
class VisitListOptions:
    xform_ids: list[str] | None = None
    visit_ids: list[int] | None = None
    to_status: str = VisitValidationStatus.over_limit.value
    expand: bool = False


def _named_visits(opts: VisitListOptions) -> dict[int, tuple]:
    if opts.xform_ids is not None:
        column, values = "xform_id", sorted(set(opts.xform_ids))
    else:
        column, values = "id", sorted(set(opts.visit_ids or []))
    array, kind = (text_array, "text") if column == "xform_id" else (int_array, "bigint")
    rows = fetch(
        f"SELECT v.id, v.{column} FROM {table(UserVisit)} v WHERE v.{column} = ANY(%s::{kind}[])",
        [array(values)],
    )
    found = {key for _, key in rows}
    unknown = [v for v in values if v not in found]
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        label = "xform ids" if column == "xform_id" else "visit ids"
        raise LedgerError(f"unknown {label}: {shown}{more}")
    return {visit_id: key for visit_id, key in rows}


def plan_visit_list(opts: VisitListOptions) -> list[PlannedRow]:
    if opts.to_status not in WORK_STATUS_FOR:
        allowed = ", ".join(WORK_STATUS_FOR)
        raise LedgerError(f"unsupported target status {opts.to_status!r}; use one of {allowed}")
    named = _named_visits(opts)
    if not named:
        raise LedgerError("the list names no visits")
    ids = int_array(named)
    del named  # a dict per named visit: not kept while the plan is built
    work_to = WORK_STATUS_FOR[opts.to_status]

    # The named visits, their works, and every visit of those works, in one statement, read a
    # chunk at a time.
    rows = stream(
        f"""
        WITH named AS (SELECT unnest(%(ids)s::bigint[]) AS id)
        SELECT v.id, v.completed_work_id, v.opportunity_id,
               COALESCE(w.opportunity_access_id, v.opportunity_access_id),
               v.xform_id, v.status, a.suspended, w.status, (n.id IS NOT NULL),
               w.payment_date IS NOT NULL, w.invoice_id IS NOT NULL
        FROM {table(UserVisit)} v
        LEFT JOIN named n ON n.id = v.id
        LEFT JOIN {table(CompletedWork)} w ON w.id = v.completed_work_id
        LEFT JOIN {table(OpportunityAccess)} a
               ON a.id = COALESCE(w.opportunity_access_id, v.opportunity_access_id)
        -- the named visits and every visit of their works, both through an index
        WHERE v.id = ANY(%(ids)s::bigint[])
           OR v.completed_work_id = ANY(ARRAY(
                SELECT DISTINCT completed_work_id FROM {table(UserVisit)}
                WHERE id = ANY(%(ids)s::bigint[]) AND completed_work_id IS NOT NULL))
        ORDER BY v.completed_work_id NULLS FIRST, v.id
        """,
        {"ids": ids},
    )

    visit, work, excluded_trial, excluded_target = (
        EntityKind.visit.value,
        EntityKind.completed_work.value,
        ExclusionReason.trial.value,
        ExclusionReason.already_target.value,
    )
    planned: list[PlannedRow] = []
    missing: dict[int, list[str]] = defaultdict(list)
    works_seen: dict[int, tuple] = {}
    # The driver makes a new object of every value it reads. Values a plan repeats row after
    # row (opportunity, access, statuses) are kept once each; a work's id once per work (its
    # visits come together).
    share = {}.setdefault
    last_work = None
    for (
        visit_id,
        work_id,
        opp_id,
        access_id,
        xform_id,
        status,
        suspended,
        work_status,
        is_named,
        paid,
        invoiced,
    ) in rows:
        paid, invoiced = bool(paid), bool(invoiced)
        opp_id, access_id = share(opp_id, opp_id), share(access_id, access_id)
        status, work_status = share(status, status), share(work_status, work_status)
        if work_id == last_work:
            work_id = last_work
        last_work = work_id
        if status in NEVER_FLIPPED or status == opts.to_status:
            if is_named:
                reason = excluded_trial if status in NEVER_FLIPPED else excluded_target
                planned.append(
                    PlannedRow(
                        visit, visit_id, work_id, opp_id, access_id, xform_id, status,
                        opts.to_status, reason, bool(suspended), paid=paid, invoiced=invoiced,
                    )
                )  # fmt: skip
            continue
        if not is_named and not opts.expand:
            missing[work_id].append(xform_id or f"visit {visit_id}")
            continue
        planned.append(
            PlannedRow(
                visit,
                visit_id,
                work_id,
                opp_id,
                access_id,
                xform_id,
                status,
                opts.to_status,
                "",
                bool(suspended),
                paid=paid,
                invoiced=invoiced,
            )
        )
        if work_id is not None:
            works_seen[work_id] = (opp_id, access_id, work_status, bool(suspended), paid, invoiced)
    if missing:
        first = sorted(missing)[:5]
        detail = "; ".join(f"work {w} lacks {', '.join(missing[w])}" for w in first)
        more = f" (and {len(missing) - 5} more works)" if len(missing) > 5 else ""
        raise LedgerError(
            f"the list names only some visits of {len(missing)} completed works: "
            f"{detail}{more}; add them or use --expand"
        )
    for work_id, seen in sorted(works_seen.items()):
        opp_id, access_id, work_status, suspended, paid, invoiced = seen
        if work_status != work_to:
            planned.append(
                PlannedRow(
                    work,
                    work_id,
                    work_id,
                    opp_id,
                    access_id,
                    None,
                    work_status,
                    work_to,
                    "",
                    suspended,
                    paid=paid,
                    invoiced=invoiced,
                )
            )
    return planned
