"""Planned rows the database holds: priced, digested, summarised and stored without being read
into the planning process.

An undo's rows are a query over the events of the batch it reverts. Read into Python they
cost about half a kilobyte each with the dates they restore, most of an undo plan's peak
memory at 500,000 flips. :class:`HeldRows` keeps them a query: pricing reads the flips as
arrays the database builds, the report's counts are aggregates, the digest is the SQL one, and
the rows are stored with ``INSERT … SELECT``. What leaves the database is per access, plus
each planned work's target status (the projection needs it to tell which works the host's
recompute would move).

Because the rows are read again at each step, the rows stored must be the rows priced:
:meth:`HeldRows.store` computes the digest of what it inserted in the same statement and the
caller compares it with the digest taken in the pricing snapshot (:meth:`HeldRows.digest`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connection

from ledger import digests
from ledger.models import EntityKind, ExclusionReason, PlannedChange
from ledger.planners.rows import PlannedRow, fetch
from ledger.sql import chunks, cursor, int_array, table

WORK = EntityKind.completed_work.value
_COLUMNS = ", ".join(PlannedRow._fields)


class HeldRows:
    """Planned rows selected by ``rows_sql`` (columns as :class:`PlannedRow`'s, then
    ``stamp``: the ``status_modified_date`` the flip restores), with the units pricing left out
    (:meth:`leave_out`) marked ``would_not_hold``."""

    def __init__(self, rows_sql: str, params: list, *, restores_dates: bool = True) -> None:
        self.rows_sql = rows_sql
        self.params = list(params)
        # An undo restores each work's own date; any other flip is stamped at apply.
        self.restores_dates = restores_dates
        self.left_out: set[int] = set()
        self.priced_digest: str | None = None

    # -- the rows as SQL ------------------------------------------------------------------------

    def select(self) -> tuple[str, list]:
        """SQL and parameters for the rows as they stand (exclusions applied)."""
        columns = ", ".join(
            "CASE WHEN r.excluded = '' AND r.completed_work_id = ANY(%s::bigint[]) "
            "THEN %s ELSE r.excluded END AS excluded"
            if name == "excluded"
            else f"r.{name}"
            for name in PlannedRow._fields
        )
        return (
            f"SELECT {columns}, r.stamp FROM ({self.rows_sql}) r",
            [int_array(sorted(self.left_out)), ExclusionReason.would_not_hold.value, *self.params],
        )

    def _flips(self) -> tuple[str, list]:
        sql, params = self.select()
        return f"SELECT * FROM ({sql}) f WHERE f.excluded = ''", params

    def _one(self, sql: str, params: list) -> tuple:
        return fetch(sql, params)[0]

    # -- what pricing reads ---------------------------------------------------------------------

    def leave_out(self, work_ids) -> None:
        """Exclude the units (a work with its visits) of ``work_ids``: ``would_not_hold``."""
        self.left_out.update(work_ids)

    def has_flips(self) -> bool:
        sql, params = self._flips()
        return self._one(f"SELECT EXISTS ({sql})", params)[0]

    def flip_count(self) -> int:
        sql, params = self._flips()
        return self._one(f"SELECT count(*) FROM ({sql}) f", params)[0]

    def access_ids(self) -> list[int]:
        sql, params = self._flips()
        found = fetch(
            f"""SELECT DISTINCT f.access_id FROM ({sql}) f
                WHERE f.access_id IS NOT NULL ORDER BY 1""",
            params,
        )
        return [pk for (pk,) in found]

    def flip_arrays(self) -> dict[str, str]:
        """The flips as the projection's array parameters (as :func:`accrual_rules._flip_arrays`
        builds them from rows), built by the database: each work restores its own date."""
        sql, params = self._flips()
        statuses, work_ids, work_to, visit_ids, visit_to, stamps = self._one(
            f"""WITH f AS MATERIALIZED ({sql}),
                     s AS (SELECT COALESCE(array_agg(DISTINCT f.to_status
                                                     ORDER BY f.to_status), '{{}}') AS statuses
                           FROM f)
                SELECT s.statuses::text,
                       COALESCE(w.ids, '{{}}')::text, COALESCE(w.pos, '{{}}')::text,
                       COALESCE(v.ids, '{{}}')::text, COALESCE(v.pos, '{{}}')::text,
                       COALESCE(w.stamps, '{{}}')::text
                FROM s
                CROSS JOIN LATERAL (
                    SELECT array_agg(f.entity_id ORDER BY f.entity_id) AS ids,
                           array_agg(array_position(s.statuses, f.to_status)
                                     ORDER BY f.entity_id) AS pos,
                           array_agg(f.stamp ORDER BY f.entity_id) AS stamps
                    FROM f WHERE f.entity_kind = %s) w
                CROSS JOIN LATERAL (
                    SELECT array_agg(f.entity_id ORDER BY f.entity_id) AS ids,
                           array_agg(array_position(s.statuses, f.to_status)
                                     ORDER BY f.entity_id) AS pos
                    FROM f WHERE f.entity_kind <> %s) v""",
            [*params, WORK, WORK],
        )
        return {
            "statuses": statuses,
            "work_ids": work_ids,
            "work_to": work_to,
            "visit_ids": visit_ids,
            "visit_to": visit_to,
            "restored_ids": work_ids if self.restores_dates else "{}",
            "restored_stamps": stamps if self.restores_dates else "{}",
        }

    def planned_works(self) -> dict[int, str]:
        """Each flipped work's target status (one shared string per status)."""
        sql, params = self._flips()
        planned: dict[int, str] = {}
        with cursor(chunked=True) as cur:
            cur.execute(
                f"SELECT f.entity_id, f.to_status FROM ({sql}) f WHERE f.entity_kind = %s",
                [*params, WORK],
            )
            for pk, to_status in chunks(cur):
                planned[pk] = sys.intern(to_status)
        return planned

    def digest(self) -> str:
        sql, params = self.select()
        return self._one(digests.sql_of_rows(sql), params)[0]

    # -- what the report reads ------------------------------------------------------------------

    def counts_by_access(self) -> dict[int, list[int]]:
        """Per access: [works, visits] flipped."""
        sql, params = self._flips()
        found = fetch(
            f"""SELECT f.access_id, count(*) FILTER (WHERE f.entity_kind = %s),
                       count(*) FILTER (WHERE f.entity_kind <> %s)
                FROM ({sql}) f WHERE f.access_id IS NOT NULL GROUP BY 1""",
            [WORK, WORK, *params],
        )
        return {pk: [works, visits] for pk, works, visits in found}

    def excluded(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per exclusion reason: the work ids and the visit ids it leaves alone, sorted."""
        sql, params = self.select()
        found = fetch(
            f"""SELECT r.excluded,
                       COALESCE(array_agg(DISTINCT r.entity_id ORDER BY r.entity_id)
                                FILTER (WHERE r.entity_kind = %s), '{{}}'),
                       COALESCE(array_agg(r.entity_id ORDER BY r.entity_id)
                                FILTER (WHERE r.entity_kind <> %s), '{{}}')
                FROM ({sql}) r WHERE r.excluded <> '' GROUP BY 1""",
            [WORK, WORK, *params],
        )
        return {reason: (works, visits) for reason, works, visits in found}

    # -- storing --------------------------------------------------------------------------------

    def store(self, batch_id) -> tuple[int, str]:
        """Insert the rows as ``batch_id``'s planned changes; return their count and the
        digest of what was inserted (one statement: the digest is of the stored rows)."""
        sql, params = self.select()
        digest_sql = digests.sql_of_rows("SELECT * FROM stored")
        with connection.cursor() as cur:
            cur.execute(
                f"""WITH stored AS (
                        INSERT INTO {table(PlannedChange)} (batch_id, {_COLUMNS})
                        SELECT %s, {_COLUMNS} FROM ({sql}) r
                        RETURNING {_COLUMNS}
                    )
                    SELECT (SELECT count(*) FROM stored), ({digest_sql})""",
                [batch_id, *params],
            )
            count, digest = cur.fetchone()
        return count, digest


# -- rows staged in a temporary table -----------------------------------------------------------

STAGED = "pg_temp.ledger_plan_rows"
_TYPES = {
    "entity_kind": "text", "entity_id": "bigint", "completed_work_id": "bigint",
    "opportunity_id": "bigint", "access_id": "bigint", "xform_id": "text",
    "from_status": "text", "to_status": "text", "excluded": "text", "suspended": "boolean",
    "prev_event_id": "bigint", "members": "text", "paid": "boolean", "invoiced": "boolean",
    "stamp": "timestamptz",
}  # fmt: skip


@contextmanager
def staged(rows_sql: str, params: list | dict) -> Iterator[HeldRows]:
    """The rows ``rows_sql`` selects (a planned row's columns, then ``stamp``), written once
    to a temporary table of this session and held from there: a planner's query with its
    joins runs once, the steps after it read a plain table. Nothing else can see or change
    the table (it is the session's own, named with its schema); it is dropped on the way out.
    """
    assert list(_TYPES) == [*PlannedRow._fields, "stamp"]
    columns = ", ".join(f"{name} {kind}" for name, kind in _TYPES.items())
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {STAGED}")
        cur.execute(f"CREATE TEMPORARY TABLE {STAGED} ({columns})")
        try:
            cur.execute(f"INSERT INTO {STAGED} SELECT * FROM ({rows_sql}) r", params)
            cur.execute(f"ANALYZE {STAGED}")
            yield HeldRows(f"SELECT * FROM {STAGED}", [], restores_dates=False)
        finally:
            try:
                cur.execute(f"DROP TABLE IF EXISTS {STAGED}")
            except DatabaseError:
                # The caller's transaction failed: its rollback drops the table it created,
                # and the error that matters is the one on its way up.
                pass
