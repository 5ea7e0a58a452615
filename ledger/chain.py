"""The tamper-evident hash chain over correction events.

Each event's ``hash`` is SHA-256 over the previous event's hash and the event's own content;
the first event chains to :data:`GENESIS`. The content is defined twice on purpose — once in
Python (written at projection time, and by the offline export checker) and once in SQL (so
``verify`` recomputes a million hashes set-based inside the database) — and the test suite
holds the two to the same bytes.

Timestamps enter the content as integer microseconds since the Unix epoch, ``NULL`` as the
empty string, fields separated by U+001F and the previous hash by U+001E.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from typing import Any

GENESIS = "0" * 64
FIELD_SEP = "\x1f"
HASH_SEP = "\x1e"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

# Order matters: it is part of the hashed bytes.
CONTENT_FIELDS = (
    "batch_id",
    "entity_kind",
    "entity_id",
    "completed_work_id",
    "opportunity_id",
    "access_id",
    "xform_id",
    "from_status",
    "to_status",
    "reason",
    "inverts_id",
    "prior_status_modified_date",
    "new_status_modified_date",
    "recorded_at",
)
TIME_FIELDS = {"prior_status_modified_date", "new_status_modified_date", "recorded_at"}


def micros(value: datetime.datetime) -> int:
    return (value - EPOCH) // datetime.timedelta(microseconds=1)


def _text(name: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if name in TIME_FIELDS:
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value)
        return str(micros(value))
    return str(value)


_TIME_POSITIONS = frozenset(i for i, name in enumerate(CONTENT_FIELDS) if name in TIME_FIELDS)


def content(event: Mapping[str, Any]) -> str:
    return FIELD_SEP.join([_text(name, event.get(name)) for name in CONTENT_FIELDS])


def content_of_values(values: tuple) -> str:
    """:func:`content` for values already in ``CONTENT_FIELDS`` order (the projector's path)."""
    parts = []
    for i, value in enumerate(values):
        if value is None or value == "":
            parts.append("")
        elif i in _TIME_POSITIONS:
            parts.append(str(micros(value)))
        else:
            parts.append(str(value))
    return FIELD_SEP.join(parts)


def hash_values(prev_hash: str, values: tuple) -> str:
    return hashlib.sha256((prev_hash + HASH_SEP + content_of_values(values)).encode()).hexdigest()


def event_hash(prev_hash: str, event: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + HASH_SEP + content(event)).encode()).hexdigest()


def _sql_field(name: str, alias: str) -> str:
    column = f"{alias}.{name}"
    if name in TIME_FIELDS:
        return f"COALESCE((EXTRACT(EPOCH FROM {column}) * 1000000)::bigint::text, '')"
    return f"COALESCE({column}::text, '')"


def sql_hash_expression(alias: str = "e") -> str:
    """SQL computing an event row's hash from its stored ``prev_hash`` and content."""
    parts = " || chr(31) || ".join(_sql_field(name, alias) for name in CONTENT_FIELDS)
    return f"encode(sha256(convert_to({alias}.prev_hash || chr(30) || {parts}, 'UTF8')), 'hex')"
