"""What a reviewed plan assumed beyond its units' own state, re-checked under the apply's locks.

Compare-and-set (:mod:`ledger.projector`) holds each unit's own state: statuses, the visits a
work holds, the latest ledger event. A plan is priced and approved on more than that, and money
moves wrongly when any of it changes while the plan waits for review:

* each planned work's payment state — paid (``payment_date`` set) or invoiced — and the
  suspension of its worker's access, recorded on every planned change when it is planned;
* what each access had been paid to date when it was priced (the overpayment exposure finance
  reviewed);
* for the over-cap rule, that every planned work still ranks past its worker's cap. The rank
  depends on rows outside the batch: the worker's other works of the same payment unit (one
  set over_limit since moves the next one back within the cap) and the claim limit itself.

:meth:`Assumptions.check` runs inside the projector's transaction once it holds the chain head,
the accrual locks and the units' rows, and first locks the rows those facts live in — the
accesses and, for over-cap plans, every work of the same worker and payment unit and their
claim limits — ``FOR SHARE``, without ever waiting (:func:`ledger.sql.lock_rows_patiently`).
The host's writers respect row locks, so none of them can change what was checked before the
apply commits: a request that updates one of those rows waits for the commit. Payments are the
exception: a new ``Payment`` row is an insert no row lock stops, so the paid-to-date figure is
the one committed when the check runs (a payment also sets its works' ``payment_date``, an
update that does wait).

A fact that differs makes the plan stale: :class:`~ledger.errors.StalePlan` (exit 4) names each
unit and what changed — or, with ``skip_conflicts``, those units are skipped and recorded with
the batch like conflicting ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection

from ledger.host import CompletedWork, OpportunityAccess, OpportunityClaimLimit, Payment
from ledger.models import CorrectionBatch, EntityKind, Planner
from ledger.planners import over_cap
from ledger.planners.rows import PlannedRow
from ledger.schema import Conflict
from ledger.sql import int_array, lock_rows_patiently, table

WORK = EntityKind.completed_work.value
ZERO = Decimal(0)


@dataclass(frozen=True)
class Assumptions:
    """The facts a batch's plan was reviewed on, for the units it would flip."""

    # Planned work id -> (paid, invoiced) when planned.
    payment: Mapping[int, tuple[bool, bool]] = field(default_factory=dict)
    # Access id -> suspended when planned.
    suspended: Mapping[int, bool] = field(default_factory=dict)
    # Access id -> paid to date in the priced plan (absent: the plan was not priced).
    paid_to_date: Mapping[int, Decimal] = field(default_factory=dict)
    # Whether each planned work must still rank past its worker's cap (the over-cap rule).
    past_cap: bool = False

    @classmethod
    def of(cls, batch: CorrectionBatch, rows: Sequence[PlannedRow]) -> Assumptions:
        payment: dict[int, tuple[bool, bool]] = {}
        suspended: dict[int, bool] = {}
        for r in rows:
            if r.excluded:
                continue
            if r.entity_kind == WORK:
                payment[r.entity_id] = (r.paid, r.invoiced)
            if r.access_id is not None:
                suspended[r.access_id] = r.suspended
        priced = (batch.summary or {}).get("plan", {}).get("accesses", [])
        paid_to_date = {
            a["access_id"]: Decimal(str(a.get("paid_to_date") or 0))
            for a in priced
            if a.get("access_id") is not None
        }
        return cls(payment, suspended, paid_to_date, batch.planner == Planner.over_cap)

    def check(
        self, flips: Sequence, works_now: Mapping[int, tuple], deadline: float
    ) -> list[Conflict]:
        """Lock what the facts live in, read them, and list every unit where one differs.

        ``flips`` are the projector's, in the order it applies them; ``works_now`` the work
        rows it holds (id -> status, stamp, access).
        """
        access_ids = sorted(self.suspended)
        lock_rows_patiently(
            OpportunityAccess, ("suspended",), access_ids, strength="SHARE", deadline=deadline
        )
        work_ids = sorted(self.payment)
        now_payment, now_suspended, now_paid = _read_facts(work_ids, access_ids)
        units: dict[tuple[str, int], object] = {}  # each unit's first flip, by unit
        for f in flips:
            units.setdefault(_unit_of(f), f)
        found: list[Conflict] = []
        for work_id in work_ids:
            f = units.get((WORK, work_id))
            if f is None or work_id not in now_payment:
                continue  # not flipped, or gone (compare-and-set reports a missing row)
            was_paid, was_invoiced = self.payment[work_id]
            paid_on, invoice = now_payment[work_id]
            if was_paid != (paid_on is not None):
                found.append(_stale(f, works_now, "payment_date", _yes(was_paid), paid_on))
            if was_invoiced != (invoice is not None):
                found.append(_stale(f, works_now, "invoice", _yes(was_invoiced), invoice))
        for f in units.values():
            access_id = f.access_id
            was, now = self.suspended.get(access_id), now_suspended.get(access_id)
            if was is not None and now is not None and was != now:
                found.append(_stale(f, works_now, "suspended", _yes(was), _yes(now)))
            if access_id in self.paid_to_date:
                before, after = self.paid_to_date[access_id], now_paid.get(access_id, ZERO)
                if after != before:
                    found.append(
                        _stale(f, works_now, "paid_to_date", f"{before:.2f}", f"{after:.2f}")
                    )
        if self.past_cap and work_ids:
            found.extend(self._rank_problems(work_ids, units, works_now, deadline))
        return found

    def _rank_problems(self, work_ids, units, works_now, deadline) -> list[Conflict]:
        context_works, limits = over_cap.rank_context(work_ids)
        lock_rows_patiently(
            CompletedWork, ("status",), context_works, strength="SHARE", deadline=deadline
        )
        lock_rows_patiently(
            OpportunityClaimLimit, ("max_visits",), limits, strength="SHARE", deadline=deadline
        )
        problems = []
        for work_id, (position, cap) in sorted(over_cap.ranks(work_ids).items()):
            f = units.get((WORK, work_id))
            if f is None or position is None:
                continue  # over_limit already: compare-and-set reports the status
            if cap is None or position <= cap:
                now = "no claim limit" if cap is None else f"position {position} of {cap}"
                problems.append(_stale(f, works_now, "cap", "past the cap", now))
        return problems


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _unit_of(f) -> tuple[str, int]:
    """A flip's unit: its work (with the work's visits), or a visit without a work."""
    if f.completed_work_id is not None:
        return (WORK, f.completed_work_id)
    return (f.entity_kind, f.entity_id)


def _stale(f, works_now: Mapping[int, tuple], what: str, expected, found) -> Conflict:
    """A unit whose plan-time fact ``what`` no longer holds, in compare-and-set's terms."""
    kind, pk = _unit_of(f)
    row = works_now.get(pk) if kind == WORK else None
    return Conflict(
        entity_kind=kind,
        entity_id=pk,
        completed_work_id=f.completed_work_id,
        expected_status=f.from_status,
        found_status=row[0] if row else None,
        what=what,
        expected=str(expected),
        found="none" if found is None else str(found),
    )


def _read_facts(work_ids: list[int], access_ids: list[int]):
    """Under the locks: each work's payment date and invoice, each access's suspension and
    what has been paid to it."""
    payment: dict[int, tuple] = {}
    suspended: dict[int, bool] = {}
    paid: dict[int, Decimal] = {}
    with connection.cursor() as cursor:
        if work_ids:
            cursor.execute(
                f"""SELECT id, payment_date, invoice_id FROM {table(CompletedWork)}
                    WHERE id = ANY(%s::bigint[])""",
                [int_array(work_ids)],
            )
            payment = {pk: (paid_on, invoice) for pk, paid_on, invoice in cursor.fetchall()}
        if access_ids:
            cursor.execute(
                f"""SELECT id, suspended FROM {table(OpportunityAccess)}
                    WHERE id = ANY(%s::bigint[])""",
                [int_array(access_ids)],
            )
            suspended = dict(cursor.fetchall())
            cursor.execute(
                f"""SELECT opportunity_access_id, sum(amount) FROM {table(Payment)}
                    WHERE opportunity_access_id = ANY(%s::bigint[])
                    GROUP BY opportunity_access_id""",
                [int_array(access_ids)],
            )
            paid = {pk: Decimal(total) for pk, total in cursor.fetchall()}
    return payment, suspended, paid
