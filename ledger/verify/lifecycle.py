"""``lifecycle``: the lifecycle entries chain, and every batch's columns equal its entries."""

from __future__ import annotations

import msgspec

from ledger import chain, entries
from ledger.models import CorrectionBatch
from ledger.verify.common import MAX_PROBLEMS_PER_CHECK, Problem, Result, fetchall, scalar, tables


def _entry_chain_problems() -> tuple[int, list[Problem]]:
    t = tables()
    rows = fetchall(
        f"""
        SELECT id, batch_id, prev_hash, hash, expected_prev, computed, count(*) OVER ()
        FROM (
            SELECT n.id, n.batch_id, n.prev_hash, n.hash,
                   COALESCE(lag(n.hash) OVER (ORDER BY n.id), %s) AS expected_prev,
                   {chain.sql_entry_hash_expression("n")} AS computed
            FROM {t["entry"]} n
        ) s
        WHERE prev_hash <> expected_prev OR hash <> computed
        ORDER BY id LIMIT %s
        """,
        [chain.GENESIS, MAX_PROBLEMS_PER_CHECK],
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


def check_lifecycle() -> Result:
    """Every batch's columns against its chained lifecycle entries."""
    t = tables()
    total, problems = _entry_chain_problems()
    first_entry = scalar(f"SELECT min(at) FROM {t['entry']}")
    by_batch: dict[str, list[tuple]] = {}
    for batch_id, action, actor, at, details in fetchall(
        f"SELECT batch_id, action, actor, at, details FROM {t['entry']} ORDER BY id"
    ):
        by_batch.setdefault(str(batch_id), []).append((action, actor, at, _decode(details)))
    events = {
        str(batch): (count, last_id, last_hash, inverted)
        for batch, count, last_id, last_hash, inverted in fetchall(
            f"""
            SELECT e.batch_id, count(*), max(e.id),
                   (SELECT hash FROM {t["event"]} x WHERE x.id = max(e.id)),
                   count(i.id)
            FROM {t["event"]} e LEFT JOIN {t["event"]} i ON i.inverts_id = e.id
            GROUP BY e.batch_id
            """
        )
    }
    checked = legacy = 0
    for batch in CorrectionBatch.objects.order_by("created_at").iterator(chunk_size=2000):
        checked += 1
        if first_entry is None or batch.created_at < first_entry:
            if str(batch.pk) not in by_batch:
                legacy += 1  # planned before lifecycle entries existed
                continue
        found = _lifecycle_mismatches(batch, by_batch.get(str(batch.pk), []), events)
        total += len(found)
        problems += [
            Problem(check="lifecycle", batch=str(batch.pk), message=m, expected=e, found=f)
            for m, e, f in found
        ]
    note = f"{legacy} batches predate lifecycle entries" if legacy else ""
    return checked, total, problems[:MAX_PROBLEMS_PER_CHECK], note


def _decode(details: str) -> dict:
    try:
        value = msgspec.json.decode(details)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _lifecycle_mismatches(batch, steps: list[tuple], events: dict) -> list[tuple]:
    """(message, expected, found) for each column that disagrees with the entries."""
    found: list[tuple] = []
    by_action: dict[str, list[tuple]] = {}
    for step in steps:
        by_action.setdefault(step[0], []).append(step)

    def one(action: str) -> tuple | None:
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
        same("planned_by", batch.planned_by, plan[1])
        expected = entries.plan_details(batch)
        for key, value in expected.items():
            if entries.canonical(plan[3].get(key)) != entries.canonical(value):
                same(key, value, plan[3].get(key))
    approve = one("approve")
    if approve is None:
        if batch.approved_by or batch.approved_at:
            found.append((f"batch {batch.pk} names an approver with no approve entry", None,
                          batch.approved_by))  # fmt: skip
    else:
        same("approved_by", batch.approved_by, approve[1])
        same("approved_at", batch.approved_at, approve[2])
    applied = one("apply")
    if batch.state in ("applied", "partially_undone", "undone"):
        if applied is None:
            found.append((f"batch {batch.pk} is {batch.state} with no apply entry", "apply", None))
        else:
            same("applied_by", batch.applied_by, applied[1])
            same("applied_at", batch.applied_at, applied[2])
            count, last_id, last_hash, _ = events.get(str(batch.pk), (0, None, None, 0))
            details = applied[3]
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
    if sum(u[3].get("events", 0) for u in undos) != inverted:
        found.append(
            (f"batch {batch.pk}: its undo entries invert "
             f"{sum(u[3].get('events', 0) for u in undos)} events, {inverted} are inverted",
             str(inverted), None)
        )  # fmt: skip
    final = [u for u in undos if u[3].get("state") == "undone"]
    if batch.state == "undone":
        if not final:
            found.append((f"batch {batch.pk} is undone with no undo entry", "undo", None))
        else:
            same("undone_at", batch.undone_at, final[-1][2])
    elif final or batch.undone_at:
        found.append((f"batch {batch.pk} is {batch.state} but records a full undo", None, "undo"))
    discard = one("discard")
    if batch.state == "discarded":
        if discard is None:
            found.append((f"batch {batch.pk} is discarded with no discard entry", "discard", None))
        else:
            same("discarded_at", batch.discarded_at, discard[2])
    elif discard is not None or batch.discarded_at:
        found.append((f"batch {batch.pk} is {batch.state} but records a discard", None, "discard"))
    return found
