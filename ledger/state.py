"""The expected state of a unit, read the same way when planning and when projecting.

Compare-and-set compares more than a status: the completed work a visit belongs to, the visits
a work holds (with their statuses), and the entity's latest ledger event — so an older batch
cannot silently revert a newer one, and a visit that moved or arrived since the plan is seen.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

from ledger.host import UserVisit
from ledger.models import CorrectionEvent
from ledger.sql import chunks, int_array, table
from ledger.sql import cursor as sql_cursor


def unit_of(kind: str, entity_id: int, work_id: int | None) -> tuple[str, int]:
    """The unit an entity is flipped with: its completed work (with the work's visits), or a
    visit without a work on its own."""
    return ("completed_work", work_id) if work_id is not None else (kind, entity_id)


def members_text(members: dict[int, str]) -> str:
    """A work's visits as ``id:status,…`` in id order (what plans and events record)."""
    return ",".join(f"{pk}:{status}" for pk, status in sorted(members.items()))


def parse_members(text: str | None) -> dict[int, str]:
    if not text:
        return {}
    return {int(pk): status for pk, status in (item.split(":", 1) for item in text.split(","))}


def work_members(work_ids: Iterable[int]) -> dict[int, str]:
    """Each work's visits now, as :func:`members_text` (works without visits map to '')."""
    ids = sorted(set(work_ids))
    found = dict.fromkeys(ids, "")
    if not ids:
        return found
    with sql_cursor(chunked=True) as cursor:  # a chunk at a time: a plan's works by the 100,000
        cursor.execute(
            f"""SELECT completed_work_id, string_agg(id::text || ':' || status, ',' ORDER BY id)
                FROM {table(UserVisit)} WHERE completed_work_id = ANY(%s::bigint[])
                GROUP BY completed_work_id""",
            [int_array(ids)],
        )
        found.update(chunks(cursor))
    return found


class Latest:
    """Each entity's latest ledger event id, by kind then id (compact: ints, no tuples)."""

    __slots__ = ("by_kind",)

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[int, int]] = {}

    def get(self, kind: str, pk: int) -> int | None:
        return self.by_kind.get(kind, {}).get(pk)


def latest_events(pairs: Iterable[tuple[str, int]], *, live: bool = False) -> Latest:
    """Each entity's latest ledger event id.

    With ``live``, the latest event still in force: undo events, and events an undo inverted,
    are passed over. After batches 1, 2 and 3 and the undo of 3, batch 2's event is the live
    one, so batch 2 can be undone next — and batch 1 only after it.
    """
    found = Latest()
    ids_by_kind: dict[str, set[int]] = {}
    for kind, pk in pairs:
        ids_by_kind.setdefault(kind, set()).add(pk)
    events = table(CorrectionEvent)
    live_only = (
        f"""AND e.inverts_id IS NULL
            AND NOT EXISTS (SELECT 1 FROM {events} i WHERE i.inverts_id = e.id)"""
        if live
        else ""
    )
    for kind, ids in sorted(ids_by_kind.items()):
        with sql_cursor(chunked=True) as cursor:
            # One kind at a time: the ids go as one integer array, no kind per row.
            cursor.execute(
                f"""SELECT u.id, l.id
                    FROM unnest(%s::bigint[]) AS u(id)
                    CROSS JOIN LATERAL (
                        SELECT e.id FROM {events} e
                        WHERE e.entity_kind = %s AND e.entity_id = u.id {live_only}
                        ORDER BY e.id DESC LIMIT 1
                    ) l""",
                [int_array(sorted(ids)), kind],
            )
            latest = found.by_kind[kind] = {}
            for pk, event_id in chunks(cursor):  # a chunk at a time: no list of them all
                latest[pk] = event_id
    return found


def batches_of(event_ids: Iterable[int]) -> dict[int, str]:
    """The batch of each event (for naming who owns an entity's current state)."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, batch_id::text FROM {table(CorrectionEvent)} WHERE id = ANY(%s)", [ids]
        )
        return dict(cursor.fetchall())
