"""Checking what an operator typed, before any work starts.

Every option value is checked for its format and length here, so a bad one is refused in one
line naming the option — before a projection, a pricing or a planner runs, and without echoing
a value of any size back (values are shown cut to :data:`SHOWN` characters, escaped). Only
ASCII digits make an id (``²`` and ``١٢٣`` do not), and UUIDs, hashes and times have their
exact formats. ``argparse`` leaves values as text so that these refusals are bad input (exit 3),
not usage errors (exit 2).
"""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

from ledger.cli.output import clip, printable
from ledger.errors import LedgerError, NotFound

SHOWN = 40
MAX_ID = 2**63 - 1
MAX_REASON = 2000
MAX_TICKET = 200  # CorrectionBatch.ticket
MAX_OPERATOR = 150  # the host's username
MAX_XFORM_ID = 50  # UserVisit.xform_id
MAX_TIME = 64
MIN_PREFIX = 8
MAX_LIMIT = 100_000
MAX_SAMPLE = 10_000_000

_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-f]+")
_PREFIX = re.compile(r"[0-9a-f-]+")


def shown(value: Any) -> str:
    """A value as an error message quotes it: escaped, and cut when long."""
    return repr(clip(printable(str(value)), SHOWN))


def text(
    value: str | None,
    option: str,
    *,
    max_length: int,
    required: bool = False,
    what: str | None = None,
) -> str | None:
    """Free text (a reason, a ticket, a username): valid UTF-8, no control characters, not
    blank when given, at most ``max_length`` characters. Returns it stripped."""
    if value is None:
        if required:
            raise LedgerError(f"{option} is required ({option} {what or 'TEXT'})")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(f"{option} is not valid UTF-8 text") from None
    bad = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise LedgerError(f"{option} contains a control character (U+{ord(bad):04X})")
    stripped = value.strip()
    if not stripped:
        raise LedgerError(f"{option} is empty")
    if len(stripped) > max_length:
        raise LedgerError(f"{option} is longer than {max_length} characters ({len(stripped)})")
    return stripped


def reason(value: str | None, option: str = "--reason") -> str:
    if value is None or not value.strip():
        raise LedgerError(f"a reason is required ({option} TEXT)")
    return text(value, option, max_length=MAX_REASON)


def ticket(value: str | None) -> str:
    return text(value, "--ticket", max_length=MAX_TICKET) if value is not None else ""


def operator(value: str | None) -> str | None:
    """``--operator``: None means the ``LEDGER_DEFAULT_OPERATOR`` setting; "" is refused."""
    return text(value, "--operator", max_length=MAX_OPERATOR)


def entity_id(value: str, option: str) -> int:
    """A positive integer id in ASCII digits that fits the host's bigint ids."""
    raw = value.strip() if isinstance(value, str) else str(value)
    if not _DIGITS.fullmatch(raw):
        raise LedgerError(
            f"{option}: {shown(value)} is not an id: expected an integer in ASCII digits"
        )
    if len(raw) > 19 or int(raw) > MAX_ID:
        raise LedgerError(f"{option}: {shown(raw)} is out of range for an id")
    number = int(raw)
    if number < 1:
        raise LedgerError(f"{option}: ids start at 1")
    return number


def bounded_int(value: Any, option: str, *, low: int, high: int) -> int:
    raw = value.strip() if isinstance(value, str) else str(value)
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise LedgerError(f"{option}: {shown(value)} is not a whole number")
    if len(raw.lstrip("-")) > 12 or not low <= int(raw) <= high:
        raise LedgerError(f"{option} takes a number from {low} to {high}, not {clip(raw, 20)}")
    return int(raw)


def opportunity_uuid(value: str, option: str = "--opportunity") -> str:
    try:
        if len(value) > 45:
            raise ValueError
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise LedgerError(f"{option}: {shown(value)} is not an opportunity UUID") from None


def opportunity(value: str) -> str:
    """``history --opportunity``: its UUID, or the integer id the ledger stored."""
    raw = value.strip()
    if _DIGITS.fullmatch(raw):
        return str(entity_id(raw, "--opportunity"))
    try:
        return opportunity_uuid(raw)
    except LedgerError:
        raise LedgerError(
            f"--opportunity: {shown(value)} is not an opportunity: expected its UUID "
            "(or its integer id)"
        ) from None


def xform_id(value: str, option: str = "--xform-id") -> str:
    return text(value, option, max_length=MAX_XFORM_ID, what="X")


def batch_id(value: str, option: str = "--batch") -> str:
    """A batch: its UUID, or the first 8+ characters of it (as tables show it) when they name
    exactly one batch. Returns the full UUID."""
    raw = value.strip().lower() if isinstance(value, str) else ""
    if len(raw) <= 36:
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            pass
    if not (MIN_PREFIX <= len(raw) < 36 and _PREFIX.fullmatch(raw)):
        raise LedgerError(
            f"{option}: {shown(value)} is not a batch id (a batch id is a UUID; "
            f"its first {MIN_PREFIX} or more characters will do)"
        )
    from ledger.models import CorrectionBatch

    matches = list(
        CorrectionBatch.objects.filter(id__startswith=raw).values_list("id", flat=True)[:2]
    )
    if not matches:
        raise NotFound(f"{option}: no batch id starts with {raw}")
    if len(matches) > 1:
        raise LedgerError(f"{option}: {raw} starts more than one batch id; give more of it")
    return str(matches[0])


def hex_digest(value: str, option: str, *, exact: int | None = None, low: int = 8) -> str:
    raw = value.strip().lower() if isinstance(value, str) else ""
    if exact is not None and (len(raw) != exact or not _HEX.fullmatch(raw)):
        raise LedgerError(f"{option}: {shown(value)} is not a {exact}-character hex hash")
    if exact is None and not (low <= len(raw) <= 64 and _HEX.fullmatch(raw)):
        raise LedgerError(
            f"{option}: {shown(value)} is not a digest (from {low} to 64 hex characters)"
        )
    return raw


def moment(value: str | None, option: str) -> datetime.datetime | None:
    """An ISO-8601 time; naive means UTC, a bare date 00:00 UTC."""
    if value is None:
        return None
    from ledger.selectors import parse_time

    if not value.strip():
        raise LedgerError(f"{option} is empty (e.g. {option} 2026-05-01T12:00:00Z)")
    if len(value) > MAX_TIME or not value.isascii():
        raise LedgerError(f"{option}: {shown(value)} is not an ISO-8601 time")
    return parse_time(value, option)


def path(value: str, option: str) -> str:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{option}: empty file name")
    if "\x00" in value:
        raise LedgerError(f"{option}: a file name cannot hold a NUL character")
    return value
