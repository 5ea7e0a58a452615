"""Exact searches, each an index lookup: ids, xform ids, and batch ids — whole or shortened.

The lists show batch ids shortened to their first eight characters, so a search takes that
prefix too: ``2f1c9a3b`` becomes the range from ``2f1c9a3b-0000-…`` to ``2f1c9a3b-ffff-…``,
which a B-tree on the UUID column reads directly (UUIDs order by their bytes, as their hex).
"""

from __future__ import annotations

import string
import uuid

from django.db.models import Q

from ledger.models import EntityKind

MIN_PREFIX = 8
HEX = frozenset(string.hexdigits)


def uuid_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The UUIDs starting with ``term`` (8 to 32 hex digits, hyphens allowed), or None."""
    digits = term.strip().replace("-", "").lower()
    if not MIN_PREFIX <= len(digits) <= 32 or not set(digits) <= HEX:
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def uuid_condition(column: str, term: str) -> Q | None:
    bounds = uuid_range(term)
    if bounds is None:
        return None
    low, high = bounds
    if low == high:
        return Q(**{column: low})
    return Q(**{f"{column}__gte": low, f"{column}__lte": high})


def entity_condition(term: str) -> Q | None:
    """A visit or completed work id: ``entity_kind IN (…) AND entity_id = n`` (the entity index
    leads with the kind, so naming both kinds keeps it usable)."""
    if term.isdigit() and 0 < int(term) < 2**63:
        return Q(entity_kind__in=EntityKind.values, entity_id=int(term))
    return None


def any_of(*conditions: Q | None) -> Q | None:
    found = [c for c in conditions if c is not None]
    if not found:
        return None
    result = found[0]
    for c in found[1:]:
        result |= c
    return result


def event_search(term: str) -> Q | None:
    """Events (or planned changes) of an entity id, an xform id, or a batch id or its prefix."""
    term = term.strip()
    if not term:
        return None
    return any_of(entity_condition(term), Q(xform_id=term[:50]), uuid_condition("batch_id", term))
