"""External anchors: the chain head, signed by a witness and kept outside the database.

A database superuser can rewrite history and re-hash everything after the rewrite, delete the
newest events, or erase a whole batch and restore the host's rows; the chain is consistent
again afterwards. What they cannot change is a copy kept elsewhere. An anchor is one JSON line
naming the chain head — last event id, its hash, the event count, and the same for the
lifecycle entries — at a moment, signed with HMAC-SHA256 under a key that lives outside the
database (``LEDGER_ANCHOR_KEY``). Anchors are appended to a log outside the database
(``LEDGER_ANCHOR_LOG``) and printed, to paste into a ticket.

**The witness.** ``corrections anchor`` is meant to run as a process of its own — scheduled,
under a read-only database role, holding a key the application never sees — so that the
application's role cannot sign what it forged. Before it signs, it verifies the segment since
its previous anchor (the last line of its log, which must hold still): the events' and the
entries' chain links and hashes, ``recorded_at`` order, and every rule of the lifecycle for the
batches the segment touches — order of the steps, four eyes, the people who took them, the
plan digests and the events against the plans. A segment that fails is not signed: the refusal
names the problem (:class:`Unanchorable`).

**Keys.** A key must carry at least :data:`MIN_KEY_BITS` bits (:func:`key_bits`), the
``key_id`` printed with an anchor is an HMAC of a fixed label under the key — it tells which
key signed a line and reveals nothing of the key — and earlier keys stay listed in
``LEDGER_ANCHOR_KEYS`` so anchors signed before a rotation still verify. Without a key no
anchor can be checked, and nothing claims it was.

``verify --anchors FILE`` proves, for every anchor, that the anchored event and entry still
exist with the anchored hashes, that exactly the anchored number of events and entries lie at
or before them, and that the anchor itself was signed by a known key; the chain check proves
the chain continues from there to the head. ``check-export --anchors FILE`` holds an export's
lines to the anchors that cover them.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import string
from collections.abc import Iterable
from pathlib import Path

import msgspec
from django.db import connection, transaction

from ledger import conf
from ledger.errors import ExitCode, LedgerError
from ledger.models import BatchEntry, CorrectionEvent
from ledger.sql import db_now, table

FORMAT = 2
"""Anchor lines written now. Format 1 lines carry the fingerprint ``key_id`` of earlier
versions (a prefix of an unsalted SHA-256 of the key) and are still checked."""
MIN_KEY_BITS = 256
_KEY_ID_LABEL = b"ledger-anchor-key-id/2"
_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/-_")
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


class Unanchorable(LedgerError):
    """The witness found problems in the segment since its previous anchor, and signed
    nothing."""

    kind = "findings"
    exit_code = ExitCode.FINDINGS


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def key_bits(key: str) -> int:
    """How many bits a key carries at most, counted by its alphabet: 4 per character of a
    hexadecimal key, 6 per character of a base64 one, 8 per UTF-8 byte of anything else."""
    body = key.rstrip("=")
    if body and set(body) <= _HEX:
        return 4 * len(body)
    if body and set(body) <= _BASE64:
        return 6 * len(body)
    return 8 * len(key.encode())


def key_problem(key: object, setting: str) -> str | None:
    """Why ``key`` (a setting's value) cannot sign or check anchors, or None."""
    if not isinstance(key, str) or not key:
        return f"{setting} is not a text key"
    bits = key_bits(key)
    if bits < MIN_KEY_BITS:
        return (
            f"{setting} carries at most {bits} bits; an anchor key needs {MIN_KEY_BITS} "
            "(64 hexadecimal characters: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return None


def _setting_keys() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    current = conf.get("ANCHOR_KEY")
    if current:
        found.append(("LEDGER_ANCHOR_KEY", current))
    earlier = conf.get("ANCHOR_KEYS") or ()
    if isinstance(earlier, str):
        earlier = (earlier,)
    found += [(f"LEDGER_ANCHOR_KEYS[{i}]", key) for i, key in enumerate(earlier)]
    return found


def configuration_problems() -> list[str]:
    """Each configured anchor key that is too weak (the system check ``ledger.E002``)."""
    return [p for name, key in _setting_keys() if (p := key_problem(key, name))]


def _strong(name: str, key: object) -> bytes:
    problem = key_problem(key, name)
    if problem:
        raise LedgerError(problem)
    return str(key).encode()


def key_id(key: bytes) -> str:
    """Names the key that signed an anchor, revealing nothing about it: an HMAC of a fixed
    label under the key."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _legacy_key_id(key: bytes) -> str:
    """The fingerprint format-1 anchors carry; only ever compared, never printed again."""
    return hashlib.sha256(b"ledger-anchor-key:" + key).hexdigest()[:12]


def signing_key() -> bytes | None:
    """``LEDGER_ANCHOR_KEY``, refused when too weak; None when no key is set."""
    key = conf.get("ANCHOR_KEY")
    return _strong("LEDGER_ANCHOR_KEY", key) if key else None


def checking_keys() -> dict[tuple[int, str], bytes]:
    """Every configured key (the signing key and the earlier ones), by (anchor format,
    key_id)."""
    found: dict[tuple[int, str], bytes] = {}
    for name, value in _setting_keys():
        key = _strong(name, value)
        found[(FORMAT, key_id(key))] = key
        found[(1, _legacy_key_id(key))] = key
    return found


def require_keys(what: str) -> dict[tuple[int, str], bytes]:
    """The checking keys, or a refusal: without the key, no anchor can be held to anything."""
    keys = checking_keys()
    if not keys:
        raise LedgerError(
            f"{what}: anchors can only be checked with the key that signed them; set "
            "LEDGER_ANCHOR_KEY (and earlier keys in LEDGER_ANCHOR_KEYS)"
        )
    return keys


def configured() -> bool:
    return bool(conf.get("ANCHOR_KEY"))


def _signed_bytes(anchor: Anchor) -> bytes:
    return _encoder.encode(msgspec.structs.replace(anchor, signature=""))


def sign(anchor: Anchor, key: bytes) -> Anchor:
    mac = hmac.new(key, _signed_bytes(anchor), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(anchor, signature=mac)


def signature_problem(anchor: Anchor, keys: dict[tuple[int, str], bytes]) -> str | None:
    """Why ``anchor``'s signature does not hold under the known keys, or None."""
    key = keys.get((anchor.anchor, anchor.key_id))
    if key is None:
        return (
            f"signed with an unknown key (key_id {anchor.key_id}): forged, or its key is not "
            "configured (LEDGER_ANCHOR_KEYS)"
        )
    expected = hmac.new(key, _signed_bytes(anchor), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, anchor.signature):
        return "the signature does not match: forged"
    return None


# --------------------------------------------------------------------------------------------
# The witness
# --------------------------------------------------------------------------------------------


def _chain_end(model) -> tuple[int | None, str, int]:
    from ledger import chain

    tbl = table(model)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, hash FROM {tbl} ORDER BY id DESC LIMIT 1")
        last = cursor.fetchone()
        cursor.execute(f"SELECT count(*) FROM {tbl}")
        (count,) = cursor.fetchone()
    return (last[0], last[1], count) if last else (None, chain.GENESIS, count)


def previous_anchor(keys: dict[tuple[int, str], bytes]) -> Anchor | None:
    """The last anchor of ``LEDGER_ANCHOR_LOG``, when there is one; refused when it is not
    signed by a known key (the log was written to by someone else)."""
    log = conf.get("ANCHOR_LOG")
    if not log or not os.path.exists(log) or os.path.getsize(log) == 0:
        return None
    found = read(log)
    number, last = found[-1]
    problem = signature_problem(last, keys)
    if problem:
        raise Unanchorable(f"anchor log {log}, line {number}: {problem}; refusing to sign")
    return last


def segment_problems(since: Anchor | None) -> list[str]:
    """Everything wrong in the ledger after ``since`` (from the start when None): the anchor
    itself must still hold; then the chain links, hashes and ``recorded_at`` order of the
    events and entries after it, the head row, and every lifecycle rule of the batches the
    segment touches, with their plans."""
    from ledger import chain
    from ledger.verify import chain as chain_check
    from ledger.verify import lifecycle, plans

    messages: list[str] = []
    after_event, after_hash, after_at = None, chain.GENESIS, None
    after_entry, after_entry_hash = None, chain.GENESIS
    if since is not None:
        held, _ = check([(0, since)], signatures=False)
        messages += [f"the previous anchor no longer holds: {p.message}" for p in held]
        if held:
            return messages
        after_event, after_hash = since.event_id, since.event_hash
        after_entry, after_entry_hash = since.entry_id, since.entry_hash
        if after_event is not None:
            after_at = CorrectionEvent.objects.filter(pk=after_event).values_list(
                "recorded_at", flat=True
            )[0]
    _, found = chain_check.event_chain_problems(after_event, after_hash, after_at)
    messages += [p.message for p in found]
    _, found = lifecycle.entry_chain_problems(after_entry, after_entry_hash)
    messages += [p.message for p in found]
    head = chain_check.head_problem()
    if head is not None:
        messages.append(head.message)
    batch_ids = _touched_batches(after_event, after_entry)
    if batch_ids:
        from ledger.models import CorrectionBatch

        batches = CorrectionBatch.objects.filter(pk__in=batch_ids).order_by("created_at", "id")
        steps, events = lifecycle.read_steps(batch_ids), lifecycle.read_events(batch_ids)
        messages += [p.message for p in lifecycle.batch_problems(batches, steps, events)]
        messages += [p.message for p in plans.digest_problems(batch_ids)[1]]
        messages += [p.message for p in plans.plan_event_problems(batch_ids)[1]]
    return messages


def _touched_batches(after_event: int | None, after_entry: int | None) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT DISTINCT batch_id FROM {table(CorrectionEvent)} WHERE id > %s
                UNION SELECT DISTINCT batch_id FROM {table(BatchEntry)} WHERE id > %s""",
            [after_event or 0, after_entry or 0],
        )
        return sorted(str(b) for (b,) in cursor.fetchall())


def _witness(key: bytes, keys: dict[tuple[int, str], bytes]) -> Anchor:
    since = previous_anchor(keys)
    problems = segment_problems(since)
    if problems:
        start = f"anchor of event {since.event_id}" if since else "the start of the ledger"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Unanchorable(
            f"refusing to sign: the segment since {start} fails: {problems[0]}{more}"
        )
    event_id, event_hash, events = _chain_end(CorrectionEvent)
    entry_id, entry_hash, entries = _chain_end(BatchEntry)
    return sign(
        Anchor(
            at=db_now(),
            event_id=event_id,
            event_hash=event_hash,
            events=events,
            entry_id=entry_id,
            entry_hash=entry_hash,
            entries=entries,
            key_id=key_id(key),
        ),
        key,
    )


def take() -> Anchor:
    """Verify the segment since the previous anchor, sign the chain head, and append the
    anchor to the anchor log when one is configured.

    Reads only, in one repeatable-read snapshot (a read-only database role is enough), so
    what is signed is what was verified. Raises :class:`Unanchorable` when the segment fails.
    """
    key = signing_key()
    if key is None:
        raise LedgerError("no anchor key: set LEDGER_ANCHOR_KEY (from the environment)")
    keys = checking_keys()
    if connection.in_atomic_block:
        anchor = _witness(key, keys)
    else:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            anchor = _witness(key, keys)
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


# --------------------------------------------------------------------------------------------
# Reading and checking
# --------------------------------------------------------------------------------------------


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
            anchor = msgspec.json.decode(line, type=Anchor)
        except msgspec.DecodeError as error:
            raise LedgerError(
                f"anchor file {path}, line {number}: not an anchor ({error})"
            ) from None
        if anchor.anchor not in (1, FORMAT):
            raise LedgerError(
                f"anchor file {path}, line {number}: unknown anchor format {anchor.anchor}"
            )
        found.append((number, anchor))
    if not found:
        raise LedgerError(f"anchor file {path} holds no anchors")
    return found


def check(
    anchors: Iterable[tuple[int, Anchor]],
    keys: dict[tuple[int, str], bytes] | None = None,
    *,
    signatures: bool = True,
) -> tuple[list[AnchorProblem], str]:
    """Hold the ledger to each anchor; return the problems and a note for the report.

    Each signature is checked with the known keys (``keys``, by default every configured
    key; refused without one) unless ``signatures`` is false (the witness, which checked its
    own anchor's already).
    """
    if signatures and keys is None:
        keys = require_keys("verify --anchors")
    problems: list[AnchorProblem] = []
    events, entries = table(CorrectionEvent), table(BatchEntry)
    checked = 0
    with connection.cursor() as cursor:
        for number, anchor in anchors:
            checked += 1
            if signatures:
                problem = signature_problem(anchor, keys or {})
                if problem:
                    problems.append(AnchorProblem(line=number, message=problem))
                    continue
            for kind, tbl, last_id, last_hash, count in (
                ("event", events, anchor.event_id, anchor.event_hash, anchor.events),
                ("entry", entries, anchor.entry_id, anchor.entry_hash, anchor.entries),
            ):
                if last_id is not None:
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
    note = f"{checked} anchors" + (", signatures checked" if signatures else "")
    return problems, note


def write_target() -> Path | None:
    log = conf.get("ANCHOR_LOG")
    return Path(log) if log else None
