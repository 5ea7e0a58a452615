"""``corrections verify``: the ledger's invariants, checked set-based on live data.

Each check is one or a few SQL statements over whole tables (window functions, anti-joins),
never a Python loop over events, so it stays fast on millions of events. Checks run in one
``REPEATABLE READ READ ONLY`` transaction when called outside a transaction, so they all see
the same snapshot while corrections keep being applied.

Each family of checks lives in a module of its own, named after it:

===============  ==============================================================================
check (module)   what it proves
===============  ==============================================================================
``triggers``     every guard of the ledger's models is installed on the ledger's own tables
                 (by OID: a same-named table, trigger or function elsewhere counts for
                 nothing), current, enabled in the ordinary way (``O``), fires on its events,
                 and runs its definition's function body with the pinned search path; no
                 temporary table shadows a ledger table; ``pgtrigger.ignore`` is not set as a
                 role or database default
``chain``        every event's ``hash`` recomputes from its content in its format, its
                 ``prev_hash`` is the previous event's ``hash`` (the first one's is
                 :data:`ledger.chain.GENESIS`), ``recorded_at`` never decreases, and the head
                 row names the chains' ends
``continuity``   each entity's consecutive events chain (``from_status`` = previous
                 ``to_status``); every inverse event mirrors the event it inverts
``drift``        every corrected entity's host status equals its last event's ``to_status``;
                 otherwise it is drift (something outside the ledger changed it, or the host
                 row is gone)
``recomputes``   no accrual recompute is left pending
``batches``      a batch's state matches how many of its events are inverted (none: applied,
                 some: partially_undone, all: undone); events belong only to applied batches;
                 undo events invert events of the batch they revert, and only undo events
                 invert anything
``lifecycle``    the lifecycle entries' own hash chain holds; every batch's columns equal its
                 plan / approve / apply / undo / discard entries; its steps come in chain order
                 (plan first, approve before apply — required when ``LEDGER_REQUIRE_APPROVAL``
                 is on, undo batches included); each step's user exists under that name, is
                 active and holds the step's permission, and the approver is another user than
                 the planner (``people`` holds those rules). No batch is passed over.
``plans``        every batch's plan digest recomputes from its planned changes (in the format
                 it records), and each applied batch's events are exactly its planned changes,
                 less the units it recorded as skipped
``accruals``     every access the ledger touched (events and recomputes) holds the accrual the
                 host's own code computes now (in a rolled-back transaction; ``sample`` bounds
                 how many)
``anchors``      with ``--anchors FILE``: every anchored event and entry still has its
                 anchored hash and count, and each anchor's signature holds under a configured
                 key (refused without one)
===============  ==============================================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ledger.errors import LedgerError
from ledger.sql import local_settings, read_only_snapshot
from ledger.verify.accruals import DEFAULT_SAMPLE, check_accruals
from ledger.verify.anchors import check_anchors
from ledger.verify.batches import check_batches
from ledger.verify.chain import chain_head, check_chain
from ledger.verify.common import (
    MAX_PROBLEMS_PER_CHECK,
    ChainHead,
    CheckOutcome,
    Problem,
    Result,
    VerifyReport,
    shared_reads,
)
from ledger.verify.continuity import check_continuity
from ledger.verify.drift import check_drift
from ledger.verify.lifecycle import check_lifecycle
from ledger.verify.plans import check_plans
from ledger.verify.recomputes import check_recomputes
from ledger.verify.triggers import check_triggers, ledger_triggers

CHECKS = (
    "triggers",
    "chain",
    "continuity",
    "drift",
    "recomputes",
    "batches",
    "lifecycle",
    "plans",
    "accruals",
)
# Checks that need writes (rolled back) run after the read-only snapshot.
WRITING_CHECKS = ("accruals",)

# The checks scan, sort and join whole tables and keep only what is wrong. PostgreSQL's
# default price of passing rows up from parallel workers (0.1 each) assumes the rows are
# wanted; here they are counted or filtered away, so the joins and sorts of millions of
# events are spread over its parallel workers too (a quarter to a third less time each).
PARALLEL_READS = {"parallel_tuple_cost": "0.001"}

_RUNNERS: dict[str, Callable[[], Result]] = {
    "triggers": check_triggers,
    "chain": check_chain,
    "continuity": check_continuity,
    "drift": check_drift,
    "recomputes": check_recomputes,
    "batches": check_batches,
    "lifecycle": check_lifecycle,
    "plans": check_plans,
}

__all__ = [
    "CHECKS",
    "DEFAULT_SAMPLE",
    "MAX_PROBLEMS_PER_CHECK",
    "WRITING_CHECKS",
    "ChainHead",
    "CheckOutcome",
    "Problem",
    "VerifyReport",
    "chain_head",
    "check_accruals",
    "check_batches",
    "check_chain",
    "check_continuity",
    "check_drift",
    "check_lifecycle",
    "check_plans",
    "check_recomputes",
    "check_triggers",
    "ledger_triggers",
    "run_checks",
]


def _outcome(name: str, runner: Callable[[], Result]) -> tuple[CheckOutcome, list[Problem]]:
    started = time.monotonic()
    checked, total, listed, note = runner()
    return (
        CheckOutcome(
            name=name,
            ok=total == 0,
            checked=checked,
            problems=total,
            seconds=round(time.monotonic() - started, 3),
            note=note,
        ),
        listed,
    )


def run_checks(
    names: list[str] | None = None,
    *,
    sample: int | None = DEFAULT_SAMPLE,
    anchors: str | None = None,
) -> VerifyReport:
    """Run the named checks (all of :data:`CHECKS` by default) and report.

    ``report.ok`` is true only when every check found nothing; ``report.problems`` names the
    entity, event or batch of each violation. ``sample`` bounds the accrual check; ``anchors``
    names a file of external anchors to hold the chain to.
    """
    names = list(CHECKS) if names is None else list(names)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise LedgerError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    if anchors is not None:
        from ledger import anchors as anchor_file

        anchor_file.read(anchors)  # a bad file is refused before any check runs
        anchor_file.require_keys("verify --anchors")  # and so is checking without the key
    outcomes: list[CheckOutcome] = []
    problems: list[Problem] = []

    # One snapshot for every read-only check (their own REPEATABLE READ transaction when
    # called outside one), so they agree with each other while corrections keep being applied.
    with read_only_snapshot(), local_settings(PARALLEL_READS), shared_reads():
        for name in names:
            if name in WRITING_CHECKS:
                continue
            outcome, listed = _outcome(name, _RUNNERS[name])
            outcomes.append(outcome)
            problems.extend(listed)
        if anchors is not None:
            outcome, listed = _outcome("anchors", lambda: check_anchors(anchors))
            outcomes.append(outcome)
            problems.extend(listed)
    if "accruals" in names:
        outcome, listed = _outcome("accruals", lambda: check_accruals(sample))
        outcomes.append(outcome)
        problems.extend(listed)
    return VerifyReport(
        ok=all(o.ok for o in outcomes), checks=outcomes, problems=problems, head=chain_head()
    )
