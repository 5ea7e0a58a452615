"""The plan digest: what a reviewer approves, defined once in Python and once in SQL.

A batch's ``plan_digest`` is SHA-256 over its planned changes, taken in (``entity_kind``,
``entity_id``) order. Apply refuses a batch whose planned changes no longer give its digest,
and ``verify`` re-computes every batch's digest from its planned changes in the database. The
batch records the ``digest_format`` its digest was made with:

* **Format 2** (every batch planned now): the UTF-8 bytes of ``ledger-plan/2``, then for each
  planned change every column of :data:`FIELDS_V2` — all of a planned change but its row id
  and its batch (the digest is the batch's own) — each written as ``-`` when NULL or empty or
  as ``<byte length>:<value>`` otherwise. ``suspended``, ``paid`` and ``invoiced`` are ``true``
  or ``false``. Every column apply and the recompute use is covered: the worker's access, the
  opportunity, the xform id, what the plan assumed of the unit's work.
* **Format 1** (batches planned before format 2): one line per change,
  ``kind:id:from:to:excluded:work:prev_event:members`` and a newline, NULL as ``None``. It
  left ``access_id``, ``opportunity_id``, ``xform_id`` and ``suspended`` out; such batches
  still verify against it.

The test suite holds the Python and SQL forms to the same digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from ledger.chain import sql_ascii_part, sql_part

CURRENT_FORMAT = 2
TAG_V2 = "ledger-plan/2"
# Order matters: it is part of the digested bytes (and is PlannedRow's field order).
FIELDS_V2 = (
    "entity_kind",
    "entity_id",
    "completed_work_id",
    "opportunity_id",
    "access_id",
    "xform_id",
    "from_status",
    "to_status",
    "excluded",
    "suspended",
    "prev_event_id",
    "members",
    "paid",
    "invoiced",
)
FORMATS = (1, 2)
_BOOLEANS = frozenset({"suspended", "paid", "invoiced"})
_V1_FIELDS = ("entity_kind", "entity_id", "from_status", "to_status", "excluded",
              "completed_work_id", "prev_event_id", "members")  # fmt: skip
_V1_AT = tuple(FIELDS_V2.index(name) for name in _V1_FIELDS)


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"{len(text.encode())}:{text}"


def _v1_line(row: Sequence) -> bytes:
    return (":".join(str(row[i]) for i in _V1_AT) + "\n").encode()


def _v2_line(row: Sequence) -> bytes:
    return "".join(map(_text, row)).encode()


def plan_digest(rows: Iterable[Sequence], fmt: int = CURRENT_FORMAT) -> str:
    """The digest of planned rows (tuples in :data:`FIELDS_V2` order) already in
    (``entity_kind``, ``entity_id``) order."""
    digest = hashlib.sha256()
    if fmt == 2:
        digest.update(TAG_V2.encode())
        line = _v2_line
    elif fmt == 1:
        line = _v1_line
    else:
        raise ValueError(f"unknown plan digest format {fmt}")
    for row in rows:
        digest.update(line(row))
    return digest.hexdigest()


def _sql_text(name: str, alias: str) -> str:
    if name in _BOOLEANS:
        return f"CASE WHEN {alias}.{name} THEN 'true' ELSE 'false' END"
    return f"{alias}.{name}::text"


# Integer columns: their text is ASCII digits and never empty, so only NULL needs the '-'
# and the length in bytes is the length in characters.
_INTEGERS = frozenset({"entity_id", "completed_work_id", "opportunity_id", "access_id",
                       "prev_event_id"})  # fmt: skip


def _sql_v2_field(name: str, alias: str) -> str:
    if name in _BOOLEANS:  # never NULL, never empty: 4:true or 5:false
        return f"CASE WHEN {alias}.{name} THEN '4:true' ELSE '5:false' END"
    if name in _INTEGERS:
        return sql_ascii_part(_sql_text(name, alias))
    return sql_part(_sql_text(name, alias))


def sql_digest_lines(alias: str = "p") -> dict[int, str]:
    """Per format, SQL for one planned change's digested text; aggregate it with
    :data:`SQL_ORDER` and prefix :func:`sql_prefix`."""
    v1 = " || ':' || ".join(f"COALESCE({alias}.{name}::text, 'None')" for name in _V1_FIELDS)
    v2 = " || ".join(_sql_v2_field(name, alias) for name in FIELDS_V2)
    return {1: f"{v1} || chr(10)", 2: v2}


def sql_order(alias: str = "p") -> str:
    """The order planned changes are digested in (code-point order, as Python sorts)."""
    return f'{alias}.entity_kind COLLATE "C", {alias}.entity_id, {alias}.id'


def sql_prefix(fmt: int) -> str:
    return f"'{TAG_V2}'" if fmt == 2 else "''"


def sql_of_rows(rows_sql: str) -> str:
    """SQL computing the current format's digest of the planned rows ``rows_sql`` selects
    (columns named as a planned change's, one row per entity). A batch's own rows are
    ``SELECT * FROM ledger_plannedchange WHERE batch_id = …``."""
    return f"""
        SELECT encode(sha256(convert_to({sql_prefix(CURRENT_FORMAT)}
               || COALESCE(string_agg({sql_digest_lines("p")[CURRENT_FORMAT]}, ''
                                      ORDER BY p.entity_kind COLLATE "C", p.entity_id), ''),
               'UTF8')), 'hex')
        FROM ({rows_sql}) p"""
