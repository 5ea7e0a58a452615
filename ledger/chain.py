"""The tamper-evident hash chain over correction events.

Each event's ``hash`` is SHA-256 over the previous event's hash and the event's own content;
the first event chains to :data:`GENESIS`. The content is defined twice on purpose — once in
Python (written at projection time, and by the offline export checker) and once in SQL (so
``verify`` recomputes a million hashes set-based inside the database) — and the test suite
holds the two to the same bytes.

Each event records the ``hash_format`` its hash covers:

* **Format 3** (every event written now): the UTF-8 bytes of ``ledger-event/3``, then the
  previous hash and each field of :data:`CONTENT_FIELDS_V3` in order — the event's own ``id``
  first — each written as ``-`` when NULL or empty (CSV cannot tell the two apart) or as
  ``<byte length>:<value>`` otherwise, the length counted in UTF-8 bytes. Length prefixes make
  the encoding unambiguous: no value, whatever characters it holds, can shift bytes into its
  neighbour. The id is hashed because it is the chain's order and what anchors name: an
  export whose ids were shifted no longer hashes.
* **Format 2** (events written before format 3): the same with the tag ``ledger-event/2`` and
  the fields of :data:`CONTENT_FIELDS_V2` (no id).
* **Format 1** (events written before format 2 existed): the previous hash, U+001E, then the
  fields of :data:`CONTENT_FIELDS_V1` joined by U+001F, NULL as the empty string. A reason
  containing U+001F could make two events share a hash, which is why later formats prefix
  lengths.

Formats 1 and 2 stay verifiable; the database accepts new events in format 3 only.
In all, timestamps are integer microseconds since the Unix epoch, integers and UUIDs their
canonical text.
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
CURRENT_FORMAT = 3
V2_TAG = "ledger-event/2"
V3_TAG = "ledger-event/3"

# Order matters: it is part of the hashed bytes.
CONTENT_FIELDS_V1 = (
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
CONTENT_FIELDS_V2 = (*CONTENT_FIELDS_V1, "prev_event_id", "members")
CONTENT_FIELDS_V3 = ("id", *CONTENT_FIELDS_V2)
CONTENT_FIELDS = CONTENT_FIELDS_V3  # what the projector writes, in this order
FIELDS_BY_FORMAT = {1: CONTENT_FIELDS_V1, 2: CONTENT_FIELDS_V2, 3: CONTENT_FIELDS_V3}
FORMATS = tuple(FIELDS_BY_FORMAT)


class UnknownFormat(ValueError):
    """An event names a hash format this version of the ledger does not know."""


TIME_FIELDS = {"prior_status_modified_date", "new_status_modified_date", "recorded_at"}


def micros(value: datetime.datetime) -> int:
    return (value - EPOCH) // datetime.timedelta(microseconds=1)


def _text(name: str, value: Any) -> str | None:
    """A field's canonical text, or None for NULL (an empty CSV cell is NULL: every format
    encodes NULL and empty alike)."""
    if value is None or value == "":
        return None
    if name in TIME_FIELDS:
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value)
        return str(micros(value))
    return str(value)


def _v1_bytes(prev_hash: str, texts: list[str | None]) -> bytes:
    return (prev_hash + HASH_SEP + FIELD_SEP.join(t or "" for t in texts)).encode()


def _prefixed_bytes(tag: str, prev_hash: str, texts: list[str | None]) -> bytes:
    parts = [tag]
    for text in (prev_hash, *texts):
        if not text:
            parts.append("-")
        else:
            parts.append(f"{len(text.encode())}:{text}")
    return "".join(parts).encode()


def _v2_bytes(prev_hash: str, texts: list[str | None]) -> bytes:
    return _prefixed_bytes(V2_TAG, prev_hash, texts)


def _v3_bytes(prev_hash: str, texts: list[str | None]) -> bytes:
    return _prefixed_bytes(V3_TAG, prev_hash, texts)


_ENCODERS = {1: _v1_bytes, 2: _v2_bytes, 3: _v3_bytes}


def hash_format_of(value: Any) -> int:
    """A ``hash_format`` as given (an export line's text, a row's integer) as a known format;
    a missing one is format 1 (lines exported before the field existed)."""
    if value is None or value == "":
        return 1
    try:
        fmt = int(value)
    except (TypeError, ValueError):
        raise UnknownFormat(f"hash_format {value!r} is not a number") from None
    if fmt not in FIELDS_BY_FORMAT:
        known = ", ".join(map(str, FORMATS))
        raise UnknownFormat(f"unknown hash_format {fmt} (this ledger knows {known})")
    return fmt


def event_hash(prev_hash: str, event: Mapping[str, Any], hash_format: int | None = None) -> str:
    """The hash of an event given as a mapping (an export line, a model's values).

    Raises :class:`UnknownFormat` for a format this ledger does not know.
    """
    fmt = hash_format_of(hash_format if hash_format is not None else event.get("hash_format"))
    texts = [_text(name, event.get(name)) for name in FIELDS_BY_FORMAT[fmt]]
    return hashlib.sha256(_ENCODERS[fmt](prev_hash, texts)).hexdigest()


_IS_TIME = tuple(name in TIME_FIELDS for name in CONTENT_FIELDS)
_US = datetime.timedelta(microseconds=1)


def hash_values(prev_hash: str, values: tuple) -> str:
    """Format-3 hash of values already in :data:`CONTENT_FIELDS` order (the projector's path).

    The same bytes as :func:`event_hash` with format 3, built directly as one string and
    encoded once: it runs once per event of every projection, in sequence.
    """
    parts = [V3_TAG, f"{len(prev_hash)}:{prev_hash}" if prev_hash else "-"]
    append = parts.append
    for is_time, value in zip(_IS_TIME, values, strict=True):
        if value is None or value == "":
            append("-")
            continue
        text = str((value - EPOCH) // _US) if is_time else str(value)
        append(f"{len(text) if text.isascii() else len(text.encode())}:{text}")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _sql_text(name: str, alias: str) -> str:
    """SQL for a field's canonical text (NULL stays NULL)."""
    column = f"{alias}.{name}"
    if name in TIME_FIELDS:
        return f"(EXTRACT(EPOCH FROM {column}) * 1000000)::bigint::text"
    return f"{column}::text"


def _sql_v1(alias: str) -> str:
    parts = " || chr(31) || ".join(
        f"COALESCE({_sql_text(name, alias)}, '')" for name in CONTENT_FIELDS_V1
    )
    return f"{alias}.prev_hash || chr(30) || {parts}"


def sql_part(text_sql: str) -> str:
    """SQL for one length-prefixed part (``len:text``, or ``-`` for NULL or empty): the
    encoding of hash format 2 and 3 and of plan digest format 2."""
    return (
        f"CASE WHEN {text_sql} IS NULL OR {text_sql} = '' THEN '-' "
        f"ELSE octet_length(convert_to({text_sql}, 'UTF8'))::text || ':' || {text_sql} END"
    )


# Fields whose text is digits, a sign or a UUID — ASCII, never empty: their length in UTF-8
# bytes is their length in characters, and only NULL needs the '-'.
_ASCII_FIELDS = frozenset(
    {"id", "batch_id", "entity_id", "completed_work_id", "opportunity_id", "access_id",
     "inverts_id", "prev_event_id", *TIME_FIELDS}
)  # fmt: skip


def sql_ascii_part(text_sql: str) -> str:
    """:func:`sql_part` for text that is ASCII and never empty (digits, a sign, a UUID, when
    not NULL): the same result, its value computed twice instead of four times (verify
    hashes every event and recomputes every plan digest)."""
    return f"COALESCE(length({text_sql})::text || ':' || {text_sql}, '-')"


def _sql_prefixed(tag: str, fields: tuple[str, ...], alias: str) -> str:
    parts = [f"'{tag}'", sql_part(f"{alias}.prev_hash")]
    parts += [
        (sql_ascii_part if name in _ASCII_FIELDS else sql_part)(_sql_text(name, alias))
        for name in fields
    ]
    return " || ".join(parts)


def sql_hash_expression(alias: str = "e") -> str:
    """SQL computing an event row's hash from its stored ``prev_hash``, content and format
    (NULL for a format this ledger does not know)."""
    return (
        f"encode(sha256(convert_to(CASE {alias}.hash_format WHEN 1 THEN {_sql_v1(alias)} "
        f"WHEN 2 THEN {_sql_prefixed(V2_TAG, CONTENT_FIELDS_V2, alias)} "
        f"WHEN 3 THEN {_sql_prefixed(V3_TAG, CONTENT_FIELDS_V3, alias)} END, 'UTF8')), 'hex')"
    )


# Batch lifecycle entries (ledger.models.BatchEntry) have a chain of their own, format 2 only.
ENTRY_TAG = "ledger-entry/2"
ENTRY_FIELDS = ("batch_id", "action", "actor", "actor_id", "at", "details")
_ENTRY_TIME_FIELDS = {"at"}


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """The hash of a batch lifecycle entry given as a mapping."""
    parts = [ENTRY_TAG]
    for text in (prev_hash, *(_entry_text(name, entry.get(name)) for name in ENTRY_FIELDS)):
        parts.append("-" if not text else f"{len(text.encode())}:{text}")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _entry_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in _ENTRY_TIME_FIELDS:
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value)
        return str(micros(value))
    return str(value)


def sql_entry_hash_expression(alias: str = "n") -> str:
    """SQL computing a lifecycle entry's hash from its stored ``prev_hash`` and content."""
    parts = [f"'{ENTRY_TAG}'", sql_part(f"{alias}.prev_hash")]
    for name in ENTRY_FIELDS:
        if name in _ENTRY_TIME_FIELDS:
            text = f"(EXTRACT(EPOCH FROM {alias}.{name}) * 1000000)::bigint::text"
        else:
            text = f"{alias}.{name}::text"
        parts.append(sql_part(text))
    return f"encode(sha256(convert_to({' || '.join(parts)}, 'UTF8')), 'hex')"
