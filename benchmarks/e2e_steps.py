"""The end-to-end steps: one correction of the benchmark batch, from plan to the last recompute.

Each step runs in a fresh process on a fresh copy of the same database (see
:mod:`benchmarks.e2e`), so every path starts from identical rows:

- ``e2e_ledger``: priced plan (with a lock probe on the batch's rows), approval, apply, and
  every accrual recompute done — in this process (``inline``) or on the Celery workers the
  orchestrator started (``celery``).
- ``e2e_script``: the host team's final remediation script, run once per opportunity with the
  xform ids of the batch's visits in that opportunity, as an operator pastes it into a shell.
- ``e2e_floor``: the raw-SQL floor's flip (one event row per flipped row, one UPDATE per table).

Every step ends by describing the state it left (:func:`_outcome`) so the orchestrator can check
that the ledger and the script arrive at the same statuses and the same accruals.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import time

from django.db import connection

from benchmarks import data, floor
from benchmarks.probe import Probe
from benchmarks.steps import OPERATOR, REASON, REVIEWER, _people, step


def _outcome() -> dict:
    """Digest of the batch's statuses and of every batch access's accruals, and their sums."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT b.kind, b.id, coalesce(v.status, w.status)
               FROM bench_batch_rows b
               LEFT JOIN opportunity_uservisit v ON b.kind = 'visit' AND v.id = b.id
               LEFT JOIN opportunity_completedwork w
                 ON b.kind = 'completed_work' AND w.id = b.id
               ORDER BY b.kind, b.id"""
        )
        statuses = hashlib.sha256(repr(cursor.fetchall()).encode()).hexdigest()[:16]
        cursor.execute(
            """SELECT a.id, a.suspended, a.payment_accrued,
                      coalesce(sum(w.saved_payment_accrued), 0),
                      coalesce(sum(w.saved_org_payment_accrued), 0),
                      coalesce(sum(w.saved_payment_accrued)
                               FILTER (WHERE w.status = 'over_limit'), 0)
               FROM opportunity_opportunityaccess a
               JOIN bench_accesses b ON b.access_id = a.id
               LEFT JOIN opportunity_completedwork w ON w.opportunity_access_id = a.id
               GROUP BY a.id ORDER BY a.id"""
        )
        rows = cursor.fetchall()
    # The host's bulk recompute (the script's) skips suspended accesses; the ledger recomputes
    # them too. Their accruals are compared apart.
    active = [r for r in rows if not r[1]]
    suspended = [r for r in rows if r[1]]
    return {
        "statuses_digest": statuses,
        "accruals_digest": hashlib.sha256(repr(active).encode()).hexdigest()[:16],
        "payment_accrued": sum(r[2] for r in active),
        "saved_payment_accrued": sum(r[3] for r in active),
        "saved_org_payment_accrued": sum(r[4] for r in active),
        "suspended_accesses": len(suspended),
        "suspended_payment_accrued": sum(r[2] for r in suspended),
        # Accrual still counted for works now over the limit: what a recompute takes away.
        "over_limit_accrued": sum(r[5] for r in active),
        "suspended_over_limit_accrued": sum(r[5] for r in suspended),
        "suspended_stale": sum(1 for r in suspended if r[5]),
    }


def _probe_rows(ids: dict[str, list[int]]) -> dict:
    from commcare_connect.opportunity.models import CompletedWork, OpportunityAccess, UserVisit

    return {
        UserVisit: ids["visit"],
        CompletedWork: ids["completed_work"],
        OpportunityAccess: data.batch_access_ids(),
    }


@step
def e2e_ledger(params: dict, probe: Probe) -> dict:
    from ledger import services
    from ledger.lock_probe import LockProbe

    mode = params["mode"]
    ids = data.batch_ids()
    lock_rows = _probe_rows(ids)
    _people()
    times: dict[str, float] = {}
    started = time.perf_counter()
    with LockProbe(lock_rows) as locks:
        plan = services.plan_visits(
            reason=REASON, visit_ids=ids["visit"], expand=True, operator=OPERATOR
        )
    times["plan"] = time.perf_counter() - started
    mark = time.perf_counter()
    services.approve_batch(plan.batch, operator=REVIEWER, plan_digest=plan.plan_digest)
    times["approve"] = time.perf_counter() - mark
    projected: list[float] = []

    def progress(message: str) -> None:
        if "projected" in message and not projected:
            projected.append(time.perf_counter())

    mark = time.perf_counter()
    run = services.apply_batch(plan.batch, operator=OPERATOR, progress=progress)
    applied = time.perf_counter()
    # What an operator's --wait does (nothing to wait for when the recompute ran in process).
    run = services.wait_for_recomputes(run)
    total = time.perf_counter() - started
    if run.pending_recomputes:
        raise RuntimeError(f"{run.pending_recomputes} recomputes left pending")
    times["projection"] = (projected[0] if projected else applied) - mark
    # In process the recompute runs inside apply_batch, after the projection's commit; on
    # Celery the workers start on commit and this process waits for the last one.
    times["recompute"] = total - times["plan"] - times["approve"] - times["projection"]
    if locks.errors:
        raise RuntimeError(f"the lock probe failed: {locks.errors[0]!r}")
    return {
        "seconds": total,
        "mode": mode,
        "batch": plan.batch,
        "times": times,
        "flips": {"visits": run.visits, "works": run.works, "events": run.events},
        "recompute": run.recompute,
        "accesses": len(plan.accesses),
        "recomputes_done": sum(1 for a in run.accesses if a.state == "done"),
        "lock_probe": {
            "attempts": locks.attempts,
            "failures": locks.failures,
            "failed_tables": locks.failed_tables,
        },
        **_outcome(),
    }


def _script_code(source: str):
    """The script compiled with its ``XFORM_IDS = [...]`` assignment reading a given name.

    The operator edits that one line before pasting the script; the benchmark does the same
    without touching the rest of the text.
    """
    tree = ast.parse(source)
    found = 0
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "XFORM_IDS"
        ):
            node.value = ast.Name(id="BENCH_XFORM_IDS", ctx=ast.Load())
            found += 1
    if found != 1:
        raise RuntimeError(f"the script assigns XFORM_IDS {found} times; expected once")
    return compile(ast.fix_missing_locations(tree), "script.py", "exec")


@step
def e2e_script(params: dict, probe: Probe) -> dict:
    code = _script_code(params["source"])
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT v.opportunity_id, array_agg(v.xform_id ORDER BY v.id)
               FROM bench_batch_rows b JOIN opportunity_uservisit v ON v.id = b.id
               WHERE b.kind = 'visit' GROUP BY 1 ORDER BY 1"""
        )
        per_opportunity = cursor.fetchall()
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        for _opportunity, xform_ids in per_opportunity:
            exec(code, {"__name__": "__main__", "BENCH_XFORM_IDS": list(xform_ids)})  # noqa: S102
    seconds = time.perf_counter() - started
    lines = printed.getvalue().splitlines()
    return {
        "seconds": seconds,
        "opportunities": len(per_opportunity),
        "printed": lines[:3] + (["…"] if len(lines) > 3 else []),
        **_outcome(),
    }


@step
def e2e_prepare(params: dict, probe: Probe) -> dict:
    """Not timed: the template as a production database is between corrections — vacuumed
    (hint bits and visibility map set) and analysed — so no path pays for a first read's
    writes of a freshly loaded table."""
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (FREEZE, ANALYZE)")
        cursor.execute("CHECKPOINT")
    return {"seconds": time.perf_counter() - started}


@step
def e2e_floor(params: dict, probe: Probe) -> dict:
    floor.prepare_events()
    ids = data.batch_ids()
    started = time.perf_counter()
    flipped = floor.flip(ids, "over_limit")
    return {"seconds": time.perf_counter() - started, "flipped": flipped, **_outcome()}


@step
def plan_probed(params: dict, probe: Probe) -> dict:
    """The benchmark batch planned and priced (as ``e2e_ledger`` plans it) under the lock
    probe, then discarded: the plan alone, for ``benchmarks.plan_probe``."""
    from ledger import services
    from ledger.lock_probe import LockProbe

    ids = data.batch_ids()
    lock_rows = _probe_rows(ids)
    _people()
    started = time.perf_counter()
    with LockProbe(lock_rows) as locks:
        plan = services.plan_visits(
            reason=REASON, visit_ids=ids["visit"], expand=True, operator=OPERATOR
        )
    seconds = time.perf_counter() - started
    services.discard_batch(plan.batch, operator=OPERATOR)
    return {
        "seconds": seconds,
        "flips": plan.totals.works + plan.totals.visits,
        "lock_probe": {
            "attempts": locks.attempts,
            "failures": locks.failures,
            "errors": [repr(e) for e in locks.errors[:3]],
        },
    }
