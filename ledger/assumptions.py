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

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection

from ledger.host import CompletedWork, OpportunityAccess, OpportunityClaimLimit, Payment
from ledger.models import CorrectionBatch, EntityKind, PlannedChange, Planner
from ledger.planners import over_cap
from ledger.schema import Conflict
from ledger.sql import int_array, lock_ids_patiently, table
from ledger.state import unit_of

WORK = EntityKind.completed_work.value
ZERO = Decimal(0)
HELD = "a row its re-check needs is held by a live request"


@dataclass
class Assumptions:
    """The facts a batch's plan was reviewed on, checked against its planned changes.

    The plan-time facts live on the planned changes themselves (``paid``, ``invoiced``,
    ``suspended``) and in its priced summary (paid to date); the checks compare them with the
    host's rows in SQL, so no batch is held in memory. The projector calls :meth:`lock_caps`
    right after the chain head — before the accrual locks, in the order the host's form
    processor takes its own: the claim limit row first — and :meth:`check` once it holds the
    units' rows.
    """

    batch_id: object
    # Access id -> paid to date in the priced plan (empty: the plan was not priced).
    paid_to_date: Mapping[int, Decimal] = field(default_factory=dict)
    # Whether each planned work must still rank past its worker's cap (the over-cap rule).
    past_cap: bool = False
    # Filled by lock_caps, each with its (worker, payment unit) partition: the works ranked
    # before the planned ones that their rank depends on, and the partitions whose claim
    # limit live traffic kept.
    _before: dict[int, tuple[int, int]] = field(default_factory=dict)
    _held_partitions: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def of(cls, batch: CorrectionBatch) -> Assumptions:
        priced = (batch.summary or {}).get("plan", {}).get("accesses", [])
        paid_to_date = {
            a["access_id"]: Decimal(str(a.get("paid_to_date") or 0))
            for a in priced
            if a.get("access_id") is not None
        }
        return cls(batch.pk, paid_to_date, batch.planner == Planner.over_cap)

    def _planned_works(self) -> list[int]:
        return [row[0] for row in _fetch(f"{_PLANNED} AND p.entity_kind = 'completed_work' "
                                         "ORDER BY p.entity_id", [self.batch_id],
                                         columns="p.entity_id")]  # fmt: skip

    def lock_caps(self, deadline: float, skipping: bool) -> None:
        """For over-cap plans: lock the claim limits of the planned works' partitions.

        The host's form processor locks a worker's claim limit row ``FOR UPDATE`` before
        anything else, so while the apply shares it no submission of that worker for that
        payment unit gets past its first step — it waits for the commit, holding nothing the
        apply needs. Taken before the accrual locks, as the processor does; without waiting.
        When ``skipping``, a claim limit still held at ``deadline`` makes its partition's units
        busy (:meth:`check` reports them); otherwise it is ``LockBusy``.
        """
        if not self.past_cap:
            return
        works = self._planned_works()
        if not works:
            return
        self._before, limits = over_cap.rank_context(works)
        held: list[int] | None = [] if skipping else None
        lock_ids_patiently(
            OpportunityClaimLimit, sorted(limits), strength="SHARE", deadline=deadline, busy=held
        )
        self._held_partitions = {limits[pk] for pk in held or ()}

    def check(self, deadline: float, busy: set[tuple[str, int]] | None = None) -> list[Conflict]:
        """Lock what the facts live in, read them, and list every unit where one differs.

        ``busy`` is given when skipping conflicts: the units whose rows live traffic kept
        (skipped already, not checked), to which units whose facts' rows stay held past
        ``deadline`` are added, as busy conflicts. Without it a row held past the deadline is
        ``LockBusy`` (retried).
        """
        found: list[Conflict] = []
        skip = busy if busy is not None else set()

        def held(rows) -> None:
            for row in rows:
                unit = _unit_key(row)
                if unit not in skip:
                    skip.add(unit)
                    found.append(_stale(row, "busy", "free", HELD))

        if self._held_partitions:
            held(_units_in_partitions(self.batch_id, self._held_partitions))
        access_ids = [pk for (pk,) in _fetch(
            f"{_PLANNED} AND p.access_id IS NOT NULL GROUP BY p.access_id ORDER BY 1",
            [self.batch_id], columns="p.access_id")]  # fmt: skip
        held_accesses: list[int] | None = [] if busy is not None else None
        lock_ids_patiently(
            OpportunityAccess, access_ids, strength="SHARE", deadline=deadline,
            busy=held_accesses,
        )  # fmt: skip
        if held_accesses:
            held(_units_of_accesses(self.batch_id, held_accesses))
        work, access = table(CompletedWork), table(OpportunityAccess)
        for row in _fetch(
            f"""{_PLANNED} AND p.entity_kind = 'completed_work'
                AND ((w.payment_date IS NOT NULL) <> p.paid
                     OR (w.invoice_id IS NOT NULL) <> p.invoiced)""",
            [self.batch_id],
            columns=f"{_UNIT_COLUMNS}, p.paid, w.payment_date, p.invoiced, w.invoice_id",
            join=f"JOIN {work} w ON w.id = p.entity_id",
        ):
            if _unit_key(row) in skip:
                continue
            was_paid, paid_on, was_invoiced, invoice = row[-4:]
            if was_paid != (paid_on is not None):
                found.append(_stale(row, "payment_date", _yes(was_paid), paid_on))
            if was_invoiced != (invoice is not None):
                found.append(_stale(row, "invoice", _yes(was_invoiced), invoice))
        for row in _first_of_each_unit(
            _fetch(
                f"{_PLANNED} AND a.suspended <> p.suspended",
                [self.batch_id],
                columns=f"{_UNIT_COLUMNS}, p.suspended, a.suspended",
                join=f"JOIN {access} a ON a.id = p.access_id",
            )
        ):
            if _unit_key(row) not in skip:
                found.append(_stale(row, "suspended", _yes(row[-2]), _yes(row[-1])))
        if self.paid_to_date:
            changed = _paid_to_date_changes(self.paid_to_date, access_ids)
            for row in _units_of_accesses(self.batch_id, sorted(changed)):
                if _unit_key(row) not in skip:
                    before, after = changed[row[_ACCESS]]
                    found.append(_stale(row, "paid_to_date", f"{before:.2f}", f"{after:.2f}"))
        if self.past_cap:
            found.extend(self._rank_problems(deadline, held, skip, busy is not None))
        return found

    def _rank_problems(self, deadline, held, skip, skipping) -> list[Conflict]:
        """Each planned work's rank past its cap, under locks on what the rank depends on.

        The claim limits are held (:meth:`lock_caps`) and the planned works too (``FOR
        UPDATE``, by the projector); the works ranked before them are locked here, so an edit
        of one by a PM, the admin or another batch waits for the commit. (A planned work
        skipped as busy is past the cap itself: whatever becomes of it cannot bring a later
        one back within the cap.)
        """
        held_works: list[int] | None = [] if skipping else None
        lock_ids_patiently(
            CompletedWork, sorted(self._before), strength="SHARE", deadline=deadline,
            busy=held_works,
        )  # fmt: skip
        if held_works:
            held(_units_in_partitions(self.batch_id, {self._before[pk] for pk in held_works}))
        works = [pk for pk in self._planned_works() if (WORK, pk) not in skip]
        back = {pk: (position, cap) for pk, position, cap in over_cap.back_within_cap(works)}
        if not back:
            return []
        problems = []
        for row in _fetch(
            f"{_PLANNED} AND p.entity_kind = 'completed_work' AND p.entity_id = ANY(%s::bigint[])"
            " ORDER BY p.entity_id",
            [self.batch_id, int_array(back)],
            columns=_UNIT_COLUMNS,
        ):
            position, cap = back[row[1]]
            now = "no claim limit" if cap is None else f"position {position} of {cap}"
            problems.append(_stale(row, "cap", "past the cap", now))
        return problems


# Planned changes to flip, aliased p, with the work's status now (aliased cw) for naming it.
_PLANNED = "WHERE p.batch_id = %s AND p.excluded = ''"
# kind, id, work, from status, access, the unit's work's status now
_UNIT_COLUMNS = (
    "p.entity_kind, p.entity_id, p.completed_work_id, p.from_status, p.access_id, cw.status"
)
_ACCESS = 4


def _fetch(where: str, params: list, *, columns: str, join: str = "") -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT {columns} FROM {table(PlannedChange)} p
                LEFT JOIN {table(CompletedWork)} cw ON cw.id = p.completed_work_id
                {join} {where}""",
            params,
        )
        return cursor.fetchall()


def _unit_key(row: tuple) -> tuple[str, int]:
    return unit_of(row[0], row[1], row[2])


def _first_of_each_unit(rows: list[tuple]) -> list[tuple]:
    """One row per unit: its work's own row where there is one (kinds sort works first)."""
    first: dict[tuple[str, int], tuple] = {}
    for row in sorted(rows, key=lambda r: (r[0], r[1])):
        first.setdefault(_unit_key(row), row)
    return list(first.values())


def _units_of_accesses(batch_id, access_ids) -> list[tuple]:
    if not access_ids:
        return []
    return _first_of_each_unit(
        _fetch(f"{_PLANNED} AND p.access_id = ANY(%s::bigint[])",
               [batch_id, int_array(access_ids)], columns=_UNIT_COLUMNS)
    )  # fmt: skip


def _units_in_partitions(batch_id, partitions: set[tuple[int, int]]) -> list[tuple]:
    """The planned units whose work belongs to one of these (access, payment unit)."""
    if not partitions:
        return []
    accesses, units = zip(*sorted(partitions), strict=True)
    return _first_of_each_unit(
        _fetch(
            f"""{_PLANNED} AND (cw.opportunity_access_id, cw.payment_unit_id) IN (
                    SELECT * FROM unnest(%s::bigint[], %s::bigint[]))""",
            [batch_id, int_array(accesses), int_array(units)],
            columns=_UNIT_COLUMNS,
        )
    )


def _paid_to_date_changes(
    planned: Mapping[int, Decimal], access_ids: list[int]
) -> dict[int, tuple[Decimal, Decimal]]:
    """Accesses whose payments to date differ from the priced plan's: (then, now)."""
    wanted = [pk for pk in access_ids if pk in planned]
    if not wanted:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT opportunity_access_id, sum(amount) FROM {table(Payment)}
                WHERE opportunity_access_id = ANY(%s::bigint[]) GROUP BY 1""",
            [int_array(wanted)],
        )
        now = {pk: Decimal(total) for pk, total in cursor.fetchall()}
    return {
        pk: (planned[pk], now.get(pk, ZERO)) for pk in wanted if now.get(pk, ZERO) != planned[pk]
    }


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _stale(row: tuple, what: str, expected, found) -> Conflict:
    """A unit whose plan-time fact ``what`` no longer holds, in compare-and-set's terms."""
    kind, pk = _unit_key(row)
    return Conflict(
        entity_kind=kind,
        entity_id=pk,
        completed_work_id=row[2],
        expected_status=row[3],
        found_status=row[5] if kind == WORK else None,
        what=what,
        expected=str(expected),
        found="none" if found is None else str(found),
    )
