"""``lifecycle``: the lifecycle entries chain; every batch's columns equal its entries; its
steps come in order, each taken by a user allowed to, and approved by a second person."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from ledger import chain, conf, entries
from ledger.models import CorrectionBatch
from ledger.verify.common import (
    MAX_PROBLEMS_PER_CHECK,
    Problem,
    Result,
    fetchall,
    shared,
    tables,
)
from ledger.verify.people import PERMISSIONS, UNDO_PLAN, Directory

_BATCHES_AT_ONCE = 2000


def entry_chain_problems(
    after_id: int | None = None, after_hash: str = chain.GENESIS
) -> tuple[int, list[Problem]]:
    """The lifecycle entries after ``after_id`` (all, by default) recompute and link, the
    first to ``after_hash``."""
    t = tables()
    rows = fetchall(
        f"""
        SELECT id, batch_id, prev_hash, hash, expected_prev, computed, count(*) OVER ()
        FROM (
            SELECT n.id, n.batch_id, n.prev_hash, n.hash,
                   COALESCE(lag(n.hash) OVER (ORDER BY n.id), %s) AS expected_prev,
                   {chain.sql_entry_hash_expression("n")} AS computed
            FROM {t["entry"]} n
            WHERE n.id > %s
        ) s
        WHERE prev_hash <> expected_prev OR hash <> computed
        ORDER BY id LIMIT %s
        """,
        [after_hash, after_id if after_id is not None else -1, MAX_PROBLEMS_PER_CHECK],
    )
    problems = []
    for id_, batch, prev_hash, hash_, expected_prev, computed, _ in rows:
        what = "edited" if hash_ != computed else "removed, inserted or re-hashed before it"
        problems.append(
            Problem(
                check="lifecycle",
                batch=str(batch),
                message=f"lifecycle entry {id_}: the chain breaks here ({what})",
                expected=computed if hash_ != computed else expected_prev,
                found=hash_ if hash_ != computed else prev_hash,
            )
        )
    return (rows[0][6] if rows else 0), problems


class Step(NamedTuple):
    """One lifecycle entry, its details decoded."""

    id: int
    action: str
    actor: str
    actor_id: int
    at: datetime.datetime
    details: dict


def read_steps(batch_ids: list[str] | None = None) -> dict[str, list[Step]]:
    """Each batch's entries in chain order (of the given batches, or all)."""
    t = tables()
    where, params = ("WHERE batch_id = ANY(%s::uuid[])", [batch_ids]) if batch_ids else ("", [])
    by_batch: dict[str, list[Step]] = {}
    for id_, batch_id, action, actor, actor_id, at, details in fetchall(
        f"SELECT id, batch_id, action, actor, actor_id, at, details FROM {t['entry']} {where} "
        "ORDER BY id",
        params,
    ):
        by_batch.setdefault(str(batch_id), []).append(
            Step(id_, action, actor, actor_id, at, _decode(details))
        )
    return by_batch


def read_events(batch_ids: list[str] | None = None) -> dict[str, tuple]:
    """Per batch: its event count, last event id and hash, and how many are inverted (of the
    given batches, or all: read once per verify run, ``batches`` needs the same counts)."""
    if batch_ids is None:
        return shared("batch_events", _read_events)
    return _read_events(batch_ids)


def _read_events(batch_ids: list[str] | None = None) -> dict[str, tuple]:
    t = tables()
    where, params = ("WHERE e.batch_id = ANY(%s::uuid[])", [batch_ids]) if batch_ids else ("", [])
    return {
        str(batch): (count, last_id, last_hash, inverted)
        for batch, count, last_id, last_hash, inverted in fetchall(
            f"""
            SELECT e.batch_id, count(*), max(e.id),
                   (SELECT hash FROM {t["event"]} x WHERE x.id = max(e.id)),
                   count(i.id)
            FROM {t["event"]} e LEFT JOIN {t["event"]} i ON i.inverts_id = e.id
            {where}
            GROUP BY e.batch_id
            """,
            params,
        )
    }


def batch_problems(
    batches: Iterable[CorrectionBatch],
    steps: dict[str, list[Step]],
    events: dict[str, tuple],
) -> list[Problem]:
    """Every rule of the lifecycle, for each batch: its columns equal its entries, its steps
    come in order (plan, approve when approval is required, apply, undo), and each step was
    taken by an active user holding its permission — the approver another user than the
    planner. No batch is passed over, whenever it was made."""
    batches = list(batches)
    directory = Directory(s.actor_id for b in batches for s in steps.get(str(b.pk), []))
    require_approval = bool(conf.get("REQUIRE_APPROVAL"))
    problems = []
    for batch in batches:
        own = steps.get(str(batch.pk), [])
        found = _lifecycle_mismatches(batch, own, events)
        found += _order_and_people(batch, own, directory, require_approval)
        problems += [
            Problem(check="lifecycle", batch=str(batch.pk), message=m, expected=e, found=f)
            for m, e, f in found
        ]
    return problems


def check_lifecycle() -> Result:
    """The entries' chain, then every batch against its entries and the lifecycle's rules."""
    total, problems = entry_chain_problems()
    steps, events = read_steps(), read_events()
    checked = 0
    for start in range(0, 10**12, _BATCHES_AT_ONCE):
        batches = list(CorrectionBatch.objects.order_by("created_at", "id")[
            start : start + _BATCHES_AT_ONCE
        ])  # fmt: skip
        if not batches:
            break
        checked += len(batches)
        found = batch_problems(batches, steps, events)
        total += len(found)
        problems += found[: max(0, MAX_PROBLEMS_PER_CHECK - len(problems))]
    return checked, total, problems[:MAX_PROBLEMS_PER_CHECK], ""


def _decode(details: str) -> dict:
    try:
        value = msgspec.json.decode(details)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _lifecycle_mismatches(batch, steps: list[Step], events: dict) -> list[tuple]:
    """(message, expected, found) for each column that disagrees with the entries."""
    found: list[tuple] = []
    by_action: dict[str, list[Step]] = {}
    for step in steps:
        by_action.setdefault(step.action, []).append(step)

    def one(action: str) -> Step | None:
        rows = by_action.get(action, [])
        if len(rows) > 1:
            found.append((f"batch {batch.pk} has {len(rows)} {action} entries", "1", None))
        return rows[0] if rows else None

    def same(what: str, column, entry_value) -> None:
        if column != entry_value:
            found.append(
                (f"batch {batch.pk}: {what} says {column!r}, its entry says {entry_value!r}",
                 str(entry_value), str(column))
            )  # fmt: skip

    plan = one("plan")
    if plan is None:
        found.append((f"batch {batch.pk} has no plan entry", "plan", None))
    else:
        same("planned_by", batch.planned_by, plan.actor)
        expected = entries.plan_details(batch)
        if "created_at" not in plan.details:
            del expected["created_at"]  # entries written before it was recorded
        for key, value in expected.items():
            if entries.canonical(plan.details.get(key)) != entries.canonical(value):
                same(key, value, plan.details.get(key))
    approve = one("approve")
    if approve is None:
        if batch.approved_by or batch.approved_at:
            found.append((f"batch {batch.pk} names an approver with no approve entry", None,
                          batch.approved_by))  # fmt: skip
    else:
        same("approved_by", batch.approved_by, approve.actor)
        same("approved_at", batch.approved_at, approve.at)
        same("the approved plan digest", batch.plan_digest, approve.details.get("plan_digest"))
    applied = one("apply")
    if batch.state in ("applied", "partially_undone", "undone"):
        if applied is None:
            found.append((f"batch {batch.pk} is {batch.state} with no apply entry", "apply", None))
        else:
            same("applied_by", batch.applied_by, applied.actor)
            same("applied_at", batch.applied_at, applied.at)
            count, last_id, last_hash, _ = events.get(str(batch.pk), (0, None, None, 0))
            details = applied.details
            same("its event count", count, details.get("events"))
            same("its last event", last_id, details.get("last_event_id"))
            same("its last event's hash", last_hash, details.get("last_event_hash"))
            same(
                "skipped_conflicts",
                entries.digest(batch.skipped_conflicts),
                details.get("skipped_sha256"),
            )
    elif applied is not None or batch.applied_by or batch.applied_at:
        found.append((f"batch {batch.pk} is {batch.state} but records an apply", None, "apply"))
    undos = by_action.get("undo", [])
    inverted = events.get(str(batch.pk), (0, None, None, 0))[3]
    undone = sum(_int(u.details.get("events")) for u in undos)
    if undone != inverted:
        found.append(
            (f"batch {batch.pk}: its undo entries invert {undone} events, {inverted} are "
             "inverted", str(inverted), None)
        )  # fmt: skip
    final = [u for u in undos if u.details.get("state") == "undone"]
    if batch.state == "undone":
        if not final:
            found.append((f"batch {batch.pk} is undone with no undo entry", "undo", None))
        else:
            same("undone_at", batch.undone_at, final[-1].at)
    elif final or batch.undone_at:
        found.append((f"batch {batch.pk} is {batch.state} but records a full undo", None, "undo"))
    discard = one("discard")
    if batch.state == "discarded":
        if discard is None:
            found.append((f"batch {batch.pk} is discarded with no discard entry", "discard", None))
        else:
            same("discarded_at", batch.discarded_at, discard.at)
    elif discard is not None or batch.discarded_at:
        found.append((f"batch {batch.pk} is {batch.state} but records a discard", None, "discard"))
    return found


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _order_and_people(
    batch: CorrectionBatch, steps: list[Step], directory: Directory, require_approval: bool
) -> list[tuple]:
    """(message, expected, found) for each step out of order, missing, or taken by someone
    who may not take it."""
    found: list[tuple] = []
    pk = batch.pk
    first = {}
    for step in steps:
        first.setdefault(step.action, step)
    plan, approve, apply = first.get("plan"), first.get("approve"), first.get("apply")
    if plan is not None and steps[0].action != "plan":
        found.append((f"batch {pk}: its {steps[0].action} entry {steps[0].id} comes before its "
                      f"plan entry {plan.id}", "plan", steps[0].action))  # fmt: skip
    if approve is not None and apply is not None and approve.id > apply.id:
        found.append((f"batch {pk} was approved (entry {approve.id}) after it was applied "
                      f"(entry {apply.id})", "approve before apply", "apply first"))  # fmt: skip
    if require_approval and apply is not None and approve is None:
        found.append((f"batch {pk} was applied without an approval (LEDGER_REQUIRE_APPROVAL)",
                      "approve", None))  # fmt: skip
    for step in steps:
        if step.action in ("undo",) and (apply is None or step.id < apply.id):
            found.append((f"batch {pk}: undo entry {step.id} precedes any apply", "apply", "undo"))
    if approve is not None and plan is not None and approve.actor_id == plan.actor_id:
        found.append((f"batch {pk} was approved by its own planner {approve.actor!r} (user "
                      f"{approve.actor_id}): four eyes need a second person",
                      "another user", approve.actor))  # fmt: skip
    for step in steps:
        needed = PERMISSIONS.get(step.action)
        if needed is None:
            found.append((f"batch {pk}: entry {step.id} names an unknown action {step.action!r}",
                          None, step.action))  # fmt: skip
            continue
        if step.action == "plan" and batch.planner == "undo":
            needed = UNDO_PLAN
        for problem in directory.problems(step.actor, step.actor_id, needed):
            found.append((f"batch {pk}: the {step.action} entry {step.id}: {problem}", None,
                          step.actor))  # fmt: skip
    return found
