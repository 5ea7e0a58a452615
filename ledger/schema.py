"""Everything the ledger serializes: plan reports, apply/undo reports, history, exports.

msgspec Structs, encoded to JSON with decimals as strings (exact money, never floats). The
field-by-field documentation lives in ``docs/json-schema.md``; ``corrections schema`` prints
the machine-readable JSON Schema generated from these Structs.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Literal

import msgspec


class AccessPlan(msgspec.Struct, kw_only=True):
    """What a correction does to one worker's access, priced by the host's accrual rules."""

    access_id: int
    opportunity_id: int
    opportunity: str
    worker: str
    currency: str
    suspended: bool
    works: int
    visits: int
    accrual_now: int
    projected_accrual: int
    worker_accrual_change: int
    worker_accrual_change_usd: Decimal
    org_accrual_change: int
    org_accrual_change_usd: Decimal
    paid_to_date: Decimal
    overpayment_exposure: Decimal


class Exclusion(msgspec.Struct, kw_only=True):
    """Entities in scope that are not flipped, by reason (``ExclusionReason`` values)."""

    reason: str
    works: int
    visits: int
    completed_work_ids: list[int]
    visit_ids: list[int] = []


class CurrencyTotals(msgspec.Struct, kw_only=True):
    currency: str
    accesses: int
    works: int
    visits: int
    worker_accrual_change: int
    org_accrual_change: int
    paid_to_date: Decimal
    overpayment_exposure: Decimal


class PlanTotals(msgspec.Struct, kw_only=True):
    accesses: int
    suspended_accesses: int
    works: int
    visits: int
    excluded_works: int
    worker_accrual_change_usd: Decimal
    org_accrual_change_usd: Decimal
    by_currency: list[CurrencyTotals]


class PlanReport(msgspec.Struct, kw_only=True):
    batch: str | None
    state: str
    planner: str
    reason: str
    scope: dict
    plan_digest: str | None
    accesses: list[AccessPlan]
    exclusions: list[Exclusion]
    totals: PlanTotals
    # Entries of an id list named more than once (each is planned once).
    duplicate_entries: list[str] = []
    # What an operator should know about how the plan is carried out.
    notes: list[str] = []
    # How it was priced: "projection" (the host's rules projected in SQL, the default) or
    # "exact" (the host's own code in a rolled-back transaction, plan --exact).
    pricing: Literal["projection", "exact"] = "projection"


class Conflict(msgspec.Struct, kw_only=True):
    """One entity whose state differs from what the batch expects (compare-and-set)."""

    entity_kind: str
    entity_id: int
    completed_work_id: int | None
    expected_status: str
    found_status: str | None
    # What differs: status, completed_work (a visit moved), visits (a work's visits changed),
    # latest_event (another ledger event came since), missing (the row is gone), or busy (a
    # live request kept the row locked; only when skipping conflicts).
    what: str = "status"
    expected: str | None = None
    found: str | None = None
    # The batch whose event set the entity's current state, when it is not the one expected.
    owner_batch: str | None = None


class AccessOutcome(msgspec.Struct, kw_only=True):
    """One access after a projection: accrual before, projected, and what the recompute gave."""

    access_id: int
    opportunity_id: int
    accrual_before: int
    projected_accrual: int | None
    accrual_after: int | None
    state: str
    matches: bool | None = None
    accrual_before_original: int | None = None


class PendingRecompute(msgspec.Struct, kw_only=True):
    """An access whose accrual recompute is still pending, and why (busy, unreachable, failed)."""

    batch: str
    access_id: int
    reason: str


class RunReport(msgspec.Struct, kw_only=True):
    """The outcome of ``apply``, ``undo`` or ``recompute``.

    An ``apply`` or ``undo`` report describes a committed projection, whatever happened to the
    recompute after it: accesses still pending are listed in ``pending``.
    """

    batch: str
    state: str
    action: str
    reverts: str | None = None
    # After an undo: the reverted batch's state (undone, or partially_undone when units were
    # skipped and remain to be undone).
    reverted_state: str | None = None
    events: int = 0
    visits: int = 0
    works: int = 0
    skipped_conflicts: list[Conflict] = []
    accesses: list[AccessOutcome] = []
    recomputed: int = 0
    pending_recomputes: int = 0
    # How the recomputes after an apply or undo ran: "inline" (in this process) or "queued"
    # (handed to the Celery workers on commit, LEDGER_RECOMPUTE = "celery").
    recompute: str = "inline"
    # Of the pending recomputes, those in the workers' queue (not left behind).
    queued_recomputes: int = 0
    # The recomputes left pending by this run, by access, with why.
    pending: list[PendingRecompute] = []
    # Things an operator should look at that did not stop the command (accrual differences).
    findings: list[str] = []
    # The external anchor taken right after the projection, when anchoring is configured.
    anchor: str | None = None
    # Why no anchor was taken although anchoring is configured (the witness refused to sign).
    anchor_problem: str | None = None


class ScanOpportunity(msgspec.Struct, kw_only=True):
    opportunity_id: int
    opportunity: str
    name: str
    currency: str
    accesses: int
    suspended_accesses: int
    works: int
    visits: int
    excluded_works: int
    accrued_on_over_cap_works: int


class ScanReport(msgspec.Struct, kw_only=True):
    """``plan over-cap --all``: where the rule would apply; creates no batch."""

    batch: None = None
    state: str = "report"
    opportunities: list[ScanOpportunity] = []


class ApproveReport(msgspec.Struct, kw_only=True):
    """``corrections approve --json``: the batch a reviewer approved."""

    batch: str
    state: str
    approved_by: str


class DiscardReport(msgspec.Struct, kw_only=True):
    """``corrections discard --json``: the batch dropped without being applied."""

    batch: str
    state: str


class ErrorReport(msgspec.Struct, kw_only=True):
    """What a refused command prints on stdout with ``--json`` (its stderr has one line too).

    ``error`` is the kind — ``usage``, ``bad_input``, ``wrong_state``, ``conflict``, ``busy``,
    ``not_allowed`` — and ``exit_code`` the process's exit code for it (``docs/cli.md``).
    """

    error: str
    exit_code: int
    message: str
    # For ``conflict``: each entity that no longer holds the status the batch expects.
    conflicts: list[Conflict] = []


class EventRecord(msgspec.Struct, kw_only=True):
    """One event as exported and as shown by ``history`` (chain hashes included)."""

    id: int
    batch_id: str
    entity_kind: str
    entity_id: int
    completed_work_id: int | None
    opportunity_id: int
    access_id: int | None
    xform_id: str | None
    from_status: str
    to_status: str
    reason: str
    inverts_id: int | None
    prior_status_modified_date: datetime.datetime | None
    new_status_modified_date: datetime.datetime | None
    recorded_at: datetime.datetime
    prev_event_id: int | None = None
    members: str | None = None
    hash_format: int = 1
    prev_hash: str
    hash: str


def to_builtins(value):
    """Structs to JSON-ready builtins (decimals and datetimes become strings)."""
    return msgspec.to_builtins(value)
