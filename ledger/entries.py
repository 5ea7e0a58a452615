"""Batch lifecycle entries: the chained record of who took each step of a batch, and when.

Each step — plan, approve, apply, undo, discard — appends one :class:`~ledger.models.BatchEntry`
under the chain head's lock, in the same transaction as the step itself, with the database's
clock. ``details`` is canonical JSON (sorted keys) of what the step did: digests of the plan
and of the priced summary, event counts and the last event's hash, the skipped conflicts'
digest. ``verify`` holds each batch's columns to these entries.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import msgspec

from ledger import chain
from ledger.head import lock_head, move_entries
from ledger.models import BatchEntry, CorrectionBatch
from ledger.people import Actor
from ledger.sql import db_now

_encoder = msgspec.json.Encoder(order="sorted", decimal_format="string")


def canonical(value: Any) -> str:
    return _encoder.encode(value).decode()


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON (a summary, a list of skipped conflicts)."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def record(
    batch: CorrectionBatch,
    action: str,
    actor: Actor,
    details: dict,
    at: datetime.datetime | None = None,
) -> BatchEntry:
    """Append a lifecycle entry for ``batch``; call inside the step's transaction.

    ``at`` is the time the batch records for the step (its own database-clock reading), so the
    entry and the batch's column say the same.
    """
    head = lock_head()
    at = at or db_now()
    values = {
        "batch_id": str(batch.pk),
        "action": action,
        "actor": actor.username,
        "actor_id": actor.user_id,
        "at": at,
        "details": canonical(details),
    }
    entry_hash = chain.entry_hash(head.entry_hash, values)
    entry = BatchEntry.objects.create(
        batch_id=batch.pk,
        action=action,
        actor=actor.username,
        actor_id=actor.user_id,
        at=at,
        details=values["details"],
        prev_hash=head.entry_hash,
        hash=entry_hash,
    )
    move_entries(entry.pk, entry_hash, at)
    return entry


def plan_details(batch: CorrectionBatch) -> dict:
    return {
        "planner": batch.planner,
        "plan_digest": batch.plan_digest,
        "reason": batch.reason,
        "ticket": batch.ticket,
        "scope": batch.scope,
        "reverts": str(batch.reverts_id) if batch.reverts_id else None,
        "summary_sha256": digest(batch.summary),
        "created_at": batch.created_at,
    }
