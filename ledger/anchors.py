"""External anchors: the chain head, signed and kept outside the database.

A database superuser can rewrite history and re-hash everything after the rewrite, delete the
newest events, or erase a whole batch and restore the host's rows; the chain is consistent
again afterwards. What they cannot change is a copy kept elsewhere. An anchor is one JSON line
naming the chain head — last event id, its hash, the event count, and the same for the
lifecycle entries — at a moment, signed with HMAC-SHA256 under a key that lives outside the
database (``LEDGER_ANCHOR_KEY``, read from the environment). Anchors are appended to a log
outside the database (``LEDGER_ANCHOR_LOG``) and printed, to paste into a ticket.

``verify --anchors FILE`` then proves, for every anchor, that the anchored event and entry still
exist with the anchored hashes, that exactly the anchored number of events and entries lie at
or before them, and (with the key) that the anchor itself was not forged; the chain check proves
the chain continues from there to the head. ``check-export --anchors FILE`` holds an export's
lines to the anchors it covers.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

import msgspec
from django.db import connection

from ledger import conf
from ledger.errors import LedgerError
from ledger.head import read_head
from ledger.models import BatchEntry, CorrectionEvent
from ledger.sql import db_now, table

FORMAT = 1
_encoder = msgspec.json.Encoder(order="sorted")


class Anchor(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One signed chain head."""

    anchor: int = FORMAT
    at: datetime.datetime
    event_id: int | None
    event_hash: str
    events: int
    entry_id: int | None
    entry_hash: str
    entries: int
    key_id: str
    signature: str = ""


class AnchorProblem(msgspec.Struct, kw_only=True):
    line: int
    message: str


def _key() -> bytes | None:
    key = conf.get("ANCHOR_KEY")
    return key.encode() if isinstance(key, str) and key else None


def key_id(key: bytes) -> str:
    """A short fingerprint of the key, so a reader can tell which key signed an anchor."""
    return hashlib.sha256(b"ledger-anchor-key:" + key).hexdigest()[:12]


def _signed_bytes(anchor: Anchor) -> bytes:
    return _encoder.encode(msgspec.structs.replace(anchor, signature=""))


def sign(anchor: Anchor, key: bytes) -> Anchor:
    mac = hmac.new(key, _signed_bytes(anchor), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(anchor, signature=mac)


def signature_ok(anchor: Anchor, key: bytes) -> bool:
    expected = hmac.new(key, _signed_bytes(anchor), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, anchor.signature)


def configured() -> bool:
    return _key() is not None


def take() -> Anchor:
    """Sign the current chain head; append it to the anchor log when one is configured."""
    key = _key()
    if key is None:
        raise LedgerError("no anchor key: set LEDGER_ANCHOR_KEY (from the environment)")
    head = read_head()
    if head is None:
        raise LedgerError("the ledger has no chain head yet; run migrate")
    anchor = sign(
        Anchor(
            at=db_now(),
            event_id=head.event_id,
            event_hash=head.event_hash,
            events=head.events,
            entry_id=head.entry_id,
            entry_hash=head.entry_hash,
            entries=head.entries,
            key_id=key_id(key),
        ),
        key,
    )
    log = conf.get("ANCHOR_LOG")
    if log:
        line = encode(anchor) + "\n"
        # Append-only, one write per anchor, flushed to disk before the caller goes on.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return anchor


def encode(anchor: Anchor) -> str:
    return _encoder.encode(anchor).decode()


def read(path: str) -> list[tuple[int, Anchor]]:
    """Anchors of a log file, with their line numbers; a bad line is an error naming it."""
    from ledger.files import read_text

    text = read_text(path, "anchor")
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((number, msgspec.json.decode(line, type=Anchor)))
        except msgspec.DecodeError as error:
            raise LedgerError(
                f"anchor file {path}, line {number}: not an anchor ({error})"
            ) from None
    if not found:
        raise LedgerError(f"anchor file {path} holds no anchors")
    return found


def check(anchors: Iterable[tuple[int, Anchor]]) -> tuple[list[AnchorProblem], str]:
    """Hold the ledger to each anchor; return the problems and a note for the report."""
    key = _key()
    problems: list[AnchorProblem] = []
    events, entries = table(CorrectionEvent), table(BatchEntry)
    checked = signed = 0
    with connection.cursor() as cursor:
        for number, anchor in anchors:
            checked += 1
            if key is not None:
                if anchor.key_id != key_id(key) or not signature_ok(anchor, key):
                    problems.append(
                        AnchorProblem(line=number, message="the signature does not match: forged")
                    )
                    continue
                signed += 1
            for kind, tbl, last_id, last_hash, count in (
                ("event", events, anchor.event_id, anchor.event_hash, anchor.events),
                ("entry", entries, anchor.entry_id, anchor.entry_hash, anchor.entries),
            ):
                if last_id is None:
                    cursor.execute(f"SELECT count(*) FROM {tbl} WHERE id <= 0")
                else:
                    cursor.execute(f"SELECT hash FROM {tbl} WHERE id = %s", [last_id])
                    row = cursor.fetchone()
                    if row is None:
                        problems.append(
                            AnchorProblem(
                                line=number,
                                message=f"anchored {kind} {last_id} is gone (removed after it "
                                f"was anchored at {anchor.at.isoformat()})",
                            )
                        )
                        continue
                    if row[0] != last_hash:
                        problems.append(
                            AnchorProblem(
                                line=number,
                                message=f"anchored {kind} {last_id} has hash {row[0][:16]}…, "
                                f"the anchor says {last_hash[:16]}…: history was rewritten",
                            )
                        )
                        continue
                cursor.execute(
                    f"SELECT count(*) FROM {tbl} WHERE id <= %s", [last_id if last_id else 0]
                )
                now_count = cursor.fetchone()[0]
                if now_count != count:
                    problems.append(
                        AnchorProblem(
                            line=number,
                            message=f"{now_count} {kind}s up to {kind} {last_id}, the anchor "
                            f"counted {count}: {kind}s were removed or inserted before it",
                        )
                    )
    note = f"{checked} anchors"
    note += f", {signed} signatures checked" if key else ", signatures not checked (no key)"
    return problems, note


def expected_hashes(anchors: Iterable[tuple[int, Anchor]]) -> dict[int, str]:
    """Event id -> anchored hash, for checking an export against the anchors."""
    return {a.event_id: a.event_hash for _, a in anchors if a.event_id is not None}


def write_target() -> Path | None:
    log = conf.get("ANCHOR_LOG")
    return Path(log) if log else None
