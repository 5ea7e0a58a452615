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

For over-cap plans :meth:`Assumptions.lock_caps` locks the claim limits right after the chain
head, in the host's own order. :meth:`Assumptions.check` runs once the projector holds the
accrual locks and the units' rows, and first locks the rest of what the facts live in — the
accesses and, for over-cap plans, the works ranked before the planned ones — ``FOR SHARE``,
without ever waiting (:func:`ledger.sql.lock_rows_patiently`).
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
from ledger.state import unit_of

WORK = EntityKind.completed_work.value
ZERO = Decimal(0)
HELD = "a row its re-check needs is held by a live request"


@dataclass
class Assumptions:
    """The facts a batch's plan was reviewed on, for the units it would flip.

    The projector calls :meth:`lock_caps` right after the chain head — before the accrual
    locks, in the order the host's form processor takes its own: the claim limit row first —
    and :meth:`check` once it holds the units' rows.
    """

    # Planned work id -> (paid, invoiced) when planned.
    payment: Mapping[int, tuple[bool, bool]] = field(default_factory=dict)
    # Access id -> suspended when planned.
    suspended: Mapping[int, bool] = field(default_factory=dict)
    # Access id -> paid to date in the priced plan (absent: the plan was not priced).
    paid_to_date: Mapping[int, Decimal] = field(default_factory=dict)
    # Whether each planned work must still rank past its worker's cap (the over-cap rule).
    past_cap: bool = False
    # Filled by lock_caps, each with its (worker, payment unit) partition: the planned works,
    # the works ranked before them that their rank depends on, and the partitions whose claim
    # limit live traffic kept.
    _partition_of: dict[int, tuple[int, int]] = field(default_factory=dict)
    _before: dict[int, tuple[int, int]] = field(default_factory=dict)
    _held_partitions: set[tuple[int, int]] = field(default_factory=set)

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

    def lock_caps(self, deadline: float, skipping: bool) -> None:
        """For over-cap plans: lock the claim limits of the planned works' partitions.

        The host's form processor locks a worker's claim limit row ``FOR UPDATE`` before
        anything else, so while the apply shares it no submission of that worker for that
        payment unit gets past its first step — it waits for the commit, holding nothing the
        apply needs. Taken before the accrual locks, as the processor does; without waiting.
        When ``skipping``, a claim limit still held at ``deadline`` makes its partition's units
        busy (:meth:`check` reports them); otherwise it is ``LockBusy``.
        """
        if not self.past_cap or not self.payment:
            return
        self._partition_of, self._before, limits = over_cap.rank_context(sorted(self.payment))
        held: list[int] | None = [] if skipping else None
        lock_rows_patiently(
            OpportunityClaimLimit, ("max_visits",), sorted(limits), strength="SHARE",
            deadline=deadline, busy=held,
        )  # fmt: skip
        self._held_partitions = {limits[pk] for pk in held or ()}

    def check(
        self,
        flips: Sequence,
        works_now: Mapping[int, tuple],
        deadline: float,
        busy: set[tuple[str, int]] | None = None,
    ) -> list[Conflict]:
        """Lock what the facts live in, read them, and list every unit where one differs.

        ``flips`` are the projector's, in the order it applies them; ``works_now`` the work
        rows it holds (id -> status, stamp, access). ``busy`` is given when skipping
        conflicts: the units whose rows live traffic kept (skipped already, not checked), to
        which units whose facts' rows stay held past ``deadline`` are added, as busy
        conflicts. Without it a row held past the deadline is ``LockBusy`` (retried).
        """
        units: dict[tuple[str, int], object] = {}  # each unit's first flip, by unit
        for f in flips:
            if busy is None or _unit_of(f) not in busy:
                units.setdefault(_unit_of(f), f)
        found: list[Conflict] = []

        def held(unit_flips) -> None:
            for f in list(unit_flips):
                if _unit_of(f) not in busy:
                    busy.add(_unit_of(f))
                    found.append(_stale(f, works_now, "busy", "free", HELD))

        if self._held_partitions:
            held(
                f
                for (kind, pk), f in units.items()
                if kind == WORK and self._partition_of.get(pk) in self._held_partitions
            )
        units = {u: f for u, f in units.items() if busy is None or u not in busy}
        access_ids = sorted({f.access_id for f in units.values() if f.access_id in self.suspended})
        held_accesses: list[int] | None = [] if busy is not None else None
        lock_rows_patiently(
            OpportunityAccess, ("suspended",), access_ids, strength="SHARE", deadline=deadline,
            busy=held_accesses,
        )  # fmt: skip
        if held_accesses:
            held(f for f in units.values() if f.access_id in set(held_accesses))
            units = {u: f for u, f in units.items() if u not in busy}
        work_ids = sorted(pk for kind, pk in units if kind == WORK and pk in self.payment)
        now_payment, now_suspended, now_paid = _read_facts(work_ids, access_ids)
        for work_id in work_ids:
            f = units[(WORK, work_id)]
            if work_id not in now_payment:
                continue  # gone: compare-and-set reports a missing row
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
            found.extend(self._rank_problems(work_ids, units, works_now, deadline, held, busy))
        return found

    def _rank_problems(self, work_ids, units, works_now, deadline, held, busy) -> list[Conflict]:
        """Each planned work's rank past its cap, under locks on what the rank depends on.

        The claim limits are held (:meth:`lock_caps`) and the planned works too (``FOR
        UPDATE``, by the projector); the works ranked before them are locked here, so an edit
        of one by a PM, the admin or another batch waits for the commit. (A planned work
        skipped as busy is past the cap itself: whatever becomes of it cannot bring a later
        one back within the cap.)
        """
        others = sorted(pk for pk in self._before if pk not in works_now)
        held_works: list[int] | None = [] if busy is not None else None
        lock_rows_patiently(
            CompletedWork, ("status",), others, strength="SHARE", deadline=deadline,
            busy=held_works,
        )  # fmt: skip
        if held_works:
            parts = {self._before[pk] for pk in held_works}
            held(units[(WORK, pk)] for pk in work_ids if self._partition_of.get(pk) in parts)
            work_ids = [pk for pk in work_ids if (WORK, pk) not in busy]
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
    return unit_of(f.entity_kind, f.entity_id, f.completed_work_id)


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
