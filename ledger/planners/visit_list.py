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
from collections.abc import Iterator
from contextlib import contextmanager
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
from ledger.planners.held import HeldRows, staged
from ledger.planners.rows import PlannedRow, fetch, stream, table
from ledger.sql import int_array, text_array

# The named visits (the CTE ``named``) and every visit of their works, as ``v``: a union of
# ids joined to the visits. Not ``id = ANY(…) OR completed_work_id = ANY(ARRAY(subquery))``:
# PostgreSQL 15 filters every visit against the subquery's array, an element at a time (90 s
# for a list of 100,000 visits among 1,000,000).
_SELECTED = """(
        SELECT named.id FROM named
        UNION
        SELECT x.id FROM {visit} x
        WHERE x.completed_work_id IN (
            SELECT y.completed_work_id FROM {visit} y WHERE y.id IN (SELECT id FROM named))
    ) selected
    JOIN {visit} v ON v.id = selected.id"""

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


def _check_target(opts: VisitListOptions) -> None:
    if opts.to_status not in WORK_STATUS_FOR:
        allowed = ", ".join(WORK_STATUS_FOR)
        raise LedgerError(f"unsupported target status {opts.to_status!r}; use one of {allowed}")


def _refuse_partial_works(missing: dict[int, list[str]], count: int | None = None) -> None:
    """A list naming only some of a work's visits is refused, naming the first works."""
    if not missing:
        return
    count = len(missing) if count is None else count
    first = sorted(missing)[:5]
    detail = "; ".join(f"work {w} lacks {', '.join(missing[w])}" for w in first)
    more = f" (and {count - 5} more works)" if count > 5 else ""
    raise LedgerError(
        f"the list names only some visits of {count} completed works: "
        f"{detail}{more}; add them or use --expand"
    )


def plan_visit_list(opts: VisitListOptions) -> list[PlannedRow]:
    """The plan's rows read into Python (for the host-code pricing, ``plan --exact``); the
    default path keeps them in the database (:func:`staged_visit_list`)."""
    _check_target(opts)
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
        FROM {_SELECTED.format(visit=table(UserVisit))}
        LEFT JOIN named n ON n.id = v.id
        LEFT JOIN {table(CompletedWork)} w ON w.id = v.completed_work_id
        LEFT JOIN {table(OpportunityAccess)} a
               ON a.id = COALESCE(w.opportunity_access_id, v.opportunity_access_id)
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
    _refuse_partial_works(missing)
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


# -- the same plan, held by the database --------------------------------------------------------

# The named visits and every visit of their works, with what the plan needs of each; as the
# query of plan_visit_list. ``unflipped``: a visit the plan never flips (trial, or already at
# the target), kept as an excluded row when named.
_VISITS = """
    named AS (SELECT unnest(%(ids)s::bigint[]) AS id),
    v AS MATERIALIZED (
        SELECT v.id, v.completed_work_id, v.opportunity_id,
               COALESCE(w.opportunity_access_id, v.opportunity_access_id) AS access_id,
               v.xform_id, v.status, COALESCE(a.suspended, false) AS suspended,
               w.status AS work_status, (n.id IS NOT NULL) AS is_named,
               w.payment_date IS NOT NULL AS paid, w.invoice_id IS NOT NULL AS invoiced,
               (v.status = ANY(%(never)s::text[]) OR v.status = %(to)s) AS unflipped
        FROM {selected}
        LEFT JOIN named n ON n.id = v.id
        LEFT JOIN {work} w ON w.id = v.completed_work_id
        LEFT JOIN {access} a ON a.id = COALESCE(w.opportunity_access_id, v.opportunity_access_id)
    )"""

_MISSING = """
    WITH {visits}
    SELECT v.completed_work_id,
           array_agg(COALESCE(NULLIF(v.xform_id, ''), 'visit ' || v.id) ORDER BY v.id),
           count(*) OVER ()
    FROM v WHERE NOT v.unflipped AND NOT v.is_named
    GROUP BY v.completed_work_id ORDER BY v.completed_work_id LIMIT 5"""

# Each named visit (flipped, or excluded with its reason), every other visit of their works
# when expanding, each work whose visits flip; with what each row expects: its entity's latest
# ledger event and a work's visits now (as rows.with_expectations fills them in).
_ROWS = """
    WITH {visits},
    planned AS (
        SELECT %(visit_kind)s AS entity_kind, v.id AS entity_id, v.completed_work_id,
               v.opportunity_id, v.access_id, v.xform_id, v.status AS from_status,
               %(to)s AS to_status,
               CASE WHEN v.status = ANY(%(never)s::text[]) THEN %(trial)s
                    WHEN v.unflipped THEN %(target)s ELSE '' END AS excluded,
               v.suspended, v.paid, v.invoiced
        FROM v
        WHERE (v.unflipped AND v.is_named) OR (NOT v.unflipped AND (v.is_named OR %(expand)s))
        UNION ALL
        (SELECT DISTINCT ON (v.completed_work_id)
                %(work_kind)s, v.completed_work_id, v.completed_work_id, v.opportunity_id,
                v.access_id, NULL, v.work_status, %(work_to)s, '', v.suspended, v.paid,
                v.invoiced
         FROM v
         WHERE v.completed_work_id IS NOT NULL AND NOT v.unflipped
           AND (v.is_named OR %(expand)s) AND v.work_status IS DISTINCT FROM %(work_to)s
         ORDER BY v.completed_work_id, v.id DESC)
    )
    SELECT p.entity_kind, p.entity_id, p.completed_work_id, p.opportunity_id, p.access_id,
           p.xform_id, p.from_status, p.to_status, p.excluded, p.suspended,
           (SELECT e.id FROM {event} e
            WHERE e.entity_kind = p.entity_kind AND e.entity_id = p.entity_id
            ORDER BY e.id DESC LIMIT 1) AS prev_event_id,
           CASE WHEN p.entity_kind = %(work_kind)s THEN COALESCE(
               (SELECT string_agg(x.id::text || ':' || x.status, ',' ORDER BY x.id)
                FROM {visit} x WHERE x.completed_work_id = p.entity_id), '') END AS members,
           p.paid, p.invoiced, NULL::timestamptz AS stamp
    FROM planned p"""


@contextmanager
def staged_visit_list(opts: VisitListOptions) -> Iterator[HeldRows]:
    """The plan :func:`plan_visit_list` reads, with its expectations, written once to a
    temporary table and held there (:func:`ledger.planners.held.staged`): a list of 500,000
    visits is planned without its rows in Python. The same refusals, in the same words."""
    from ledger.models import CorrectionEvent

    _check_target(opts)
    named = _named_visits(opts)
    if not named:
        raise LedgerError("the list names no visits")
    params = {
        "ids": int_array(named),
        "never": text_array(NEVER_FLIPPED),
        "to": opts.to_status,
        "work_to": WORK_STATUS_FOR[opts.to_status],
        "expand": opts.expand,
        "visit_kind": EntityKind.visit.value,
        "work_kind": EntityKind.completed_work.value,
        "trial": ExclusionReason.trial.value,
        "target": ExclusionReason.already_target.value,
    }
    del named
    tables = {"visit": table(UserVisit), "work": table(CompletedWork),
              "access": table(OpportunityAccess), "event": table(CorrectionEvent)}  # fmt: skip
    visits = _VISITS.format(selected=_SELECTED.format(**tables), **tables)
    if not opts.expand:
        found = fetch(_MISSING.format(visits=visits), params)
        if found:
            _refuse_partial_works({work: list(ids) for work, ids, _ in found}, found[0][2])
    with staged(_ROWS.format(visits=visits, **tables), params) as rows:
        yield rows
