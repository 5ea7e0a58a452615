"""Tamper-evident exports of correction events, and the offline check of an exported file.

Export
    :func:`export_events` streams a contiguous segment of the hash chain — the events of one
    batch, or those recorded in a time range — as JSON Lines (one :class:`ledger.schema.
    EventRecord` object per line) or CSV (a header row, then one row per event, the same fields
    in the same order). Rows come from a server-side cursor and are written as they arrive, so
    memory stays constant whatever the size. Every line carries the event's ``prev_hash`` and
    ``hash``.

    A segment is contiguous in event id: a batch's segment runs from its first to its last
    event, a time range's from the first event recorded at or after ``since`` to the last one
    recorded before ``until``. Should another batch's events fall inside that id range they are
    exported too (with their own ``batch_id``), because a chain with holes could not be checked.

    CSV cells that a spreadsheet would read as a formula — starting with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return — are written with a single quote before them, as
    spreadsheet-safe exporters do; so is a cell that starts with a quote, so that reading
    drops exactly one leading quote from every cell that has one and gets the value back.

Check (:func:`check_export`, ``corrections check-export FILE``)
    For every line, in order:

    1. ``hash`` must equal ``ledger.chain.event_hash(prev_hash, line)`` — SHA-256 over the
       line's ``prev_hash`` and content fields in the encoding its ``hash_format`` names
       (:mod:`ledger.chain`). An **edited** line fails here.
    2. ``prev_hash`` must equal the previous line's ``hash``. A **dropped**, **inserted**,
       **duplicated** or **reordered** line fails here (on the line after the gap).

    3. With anchors (:mod:`ledger.anchors`), each anchor's signature must hold under a known key,
       and the line of an anchored event must carry the anchored hash; each anchor covers the
       lines up to its event, and an anchor whose event falls inside the file's id range
       without a line for it fails the file (lines dropped, or ids shifted — the id is hashed
       in format 3). How many lines each anchor covers is reported; ``require_anchor`` fails a
       file no anchor covers.

    The first line's ``prev_hash`` is reported, not judged: a segment starts mid-chain.
    Together with the last line's ``hash`` it anchors the file to the live ledger — compare
    them with ``corrections show --batch ID`` (``first_prev_hash``/``last_hash``) or the
    ledger's own records; a ``prev_hash`` of :data:`ledger.chain.GENESIS` means the file starts
    at the very first event. Removing lines at either *end* of a file can only be detected
    through these anchors (pass ``expect_first_prev``/``expect_last_hash``, or
    ``--first-prev``/``--last-hash`` on the command line).
"""

from __future__ import annotations

import csv
import datetime
import io
import os
from collections.abc import Iterator
from typing import IO, Any

import msgspec
from django.db.models import Max, Min, Q

from ledger import anchors as anchor_log
from ledger import chain
from ledger.errors import LedgerError, NotFound
from ledger.files import require_regular_file
from ledger.models import CorrectionEvent
from ledger.schema import EventRecord

CHUNK_SIZE = 2000
FORMATS = ("jsonl", "csv")
FIELDS: tuple[str, ...] = EventRecord.__struct_fields__

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class ExportSummary(msgspec.Struct, kw_only=True):
    events: int
    first_event_id: int | None
    last_event_id: int | None
    first_prev_hash: str | None
    last_hash: str | None


class AnchorCoverage(msgspec.Struct, kw_only=True):
    """What one anchor proved about an exported file."""

    line: int
    """The anchor's line in the anchor file."""
    event_id: int | None
    """The event it anchors."""
    lines: int
    """How many of the file's lines it covers: those up to its event, when the file holds
    that event's line with the anchored hash; 0 otherwise."""


class CheckResult(msgspec.Struct, kw_only=True):
    """What :func:`check_export` found. ``ok`` is false on the first bad line."""

    ok: bool
    format: str
    events: int
    first_event_id: int | None = None
    last_event_id: int | None = None
    first_prev_hash: str | None = None
    """Anchor: the hash of the event just before the file's first line in the ledger."""
    starts_at_genesis: bool = False
    last_hash: str | None = None
    """Anchor: the hash of the file's last event."""
    first_bad_line: int | None = None
    problem: str | None = None
    anchors: list[AnchorCoverage] = []
    """Each anchor given, with the lines it covers."""
    anchored_lines: int = 0
    """How many lines (from the first) some anchor covers; the rest are not anchored."""


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def segment(
    *,
    batch: Any = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
) -> tuple[int, int] | None:
    """The (first, last) event ids of the segment to export, or None when it is empty."""
    events = CorrectionEvent.objects.order_by()
    if batch is not None:
        if since or until:
            raise LedgerError("export: give --batch or a time range, not both")
        bounds = events.filter(batch_id=batch).aggregate(first=Min("id"), last=Max("id"))
    else:
        if since is None:
            raise LedgerError("export: give --batch ID or --since TIME")
        if until is not None and until <= since:
            raise LedgerError("export: --until must be after --since")
        q = Q(recorded_at__gte=since)
        if until is not None:
            q &= Q(recorded_at__lt=until)
        bounds = events.filter(q).aggregate(first=Min("id"), last=Max("id"))
    if bounds["first"] is None:
        return None
    return bounds["first"], bounds["last"]


def iter_records(first: int, last: int, chunk_size: int = CHUNK_SIZE) -> Iterator[EventRecord]:
    columns = [name for name in FIELDS]
    rows = (
        CorrectionEvent.objects.filter(id__gte=first, id__lte=last)
        .order_by("id")
        .values_list(*columns)
        .iterator(chunk_size=chunk_size)
    )
    batch_index = columns.index("batch_id")
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        values["batch_id"] = str(row[batch_index])
        yield EventRecord(**values)


# A cell starting with one of these is read as a formula by spreadsheets (and a quote is the
# escape itself, so it is escaped too).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_read(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def export_events(
    out: IO[str],
    *,
    batch: Any = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    fmt: str = "jsonl",
    chunk_size: int = CHUNK_SIZE,
) -> ExportSummary:
    """Stream a batch's chain segment, or a time range's, to ``out`` as JSON Lines or CSV."""
    if fmt not in FORMATS:
        raise LedgerError(f"export: unknown format {fmt!r}; use jsonl or csv")
    bounds = segment(batch=batch, since=since, until=until)
    # Every text cell quoted: a carriage return inside one (which the csv module does not quote
    # on its own under a "\n" line end) stays inside its cell.
    writer = (
        csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC) if fmt == "csv" else None
    )
    if writer is not None:
        writer.writerow(FIELDS)
    summary = ExportSummary(
        events=0, first_event_id=None, last_event_id=None, first_prev_hash=None, last_hash=None
    )
    if bounds is None:
        return summary
    for record in iter_records(*bounds, chunk_size=chunk_size):
        if writer is None:
            out.write(_encoder.encode(record).decode() + "\n")
        else:
            builtins = msgspec.to_builtins(record)
            writer.writerow([_csv_value(builtins[name]) for name in FIELDS])
        if summary.events == 0:
            summary.first_event_id = record.id
            summary.first_prev_hash = record.prev_hash
        summary.events += 1
        summary.last_event_id = record.id
        summary.last_hash = record.hash
    return summary


# --------------------------------------------------------------------------------------------
# Offline check
# --------------------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _jsonl_lines(handle: IO[str]) -> Iterator[tuple[int, dict]]:
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            value = _decoder.decode(text)
        except msgspec.DecodeError as error:
            raise _Bad(number, f"not valid JSON ({error})") from None
        if not isinstance(value, dict):
            raise _Bad(number, "not a JSON object")
        yield number, value


def _csv_lines(handle: IO[str]) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        return
    required = ("id", "prev_hash", "hash", *chain.CONTENT_FIELDS_V1)
    missing = [name for name in required if name not in header]
    if missing:
        raise _Bad(1, f"CSV header lacks {', '.join(missing)}")
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise _Bad(reader.line_num, f"{len(row)} fields, the header has {len(header)}")
        yield reader.line_num, dict(zip(header, map(_csv_read, row), strict=True))


def _detect(handle: IO[str]) -> str:
    while True:
        char = handle.read(1)
        if char == "":
            return "jsonl"
        if not char.isspace():
            return "jsonl" if char == "{" else "csv"


def _check(
    handle: IO[str], fmt: str, result: CheckResult, anchored: dict[int, str]
) -> dict[int, int]:
    """Check every line; return, for each anchored event found, how many lines lie up to it."""
    lines = _jsonl_lines(handle) if fmt == "jsonl" else _csv_lines(handle)
    previous: str | None = None
    covered: dict[int, int] = {}
    for number, record in lines:
        prev_hash, stored = record.get("prev_hash"), record.get("hash")
        event_id = record.get("id")
        label = f"line {number}" + (f" (event {event_id})" if event_id not in (None, "") else "")
        if not isinstance(prev_hash, str) or not isinstance(stored, str):
            raise _Bad(number, f"{label}: prev_hash or hash missing")
        try:
            computed = chain.event_hash(prev_hash, record)
        except chain.UnknownFormat as error:
            raise _Bad(number, f"{label}: {error}; it cannot be checked") from None
        except (TypeError, ValueError) as error:
            raise _Bad(number, f"{label}: unreadable content ({error})") from None
        if computed != stored:
            raise _Bad(number, f"{label}: hash does not match the line's content (edited)")
        if previous is None:
            result.first_prev_hash = prev_hash
            result.starts_at_genesis = prev_hash == chain.GENESIS
            result.first_event_id = _int_or_none(event_id)
        elif prev_hash != previous:
            raise _Bad(
                number,
                f"{label}: prev_hash is not the previous line's hash "
                "(a line was dropped, inserted or reordered before it)",
            )
        current_id = _int_or_none(event_id)
        if current_id is None:
            raise _Bad(number, f"{label}: id is not an integer")
        if current_id in anchored and anchored[current_id] != stored:
            raise _Bad(
                number,
                f"{label}: an external anchor recorded hash {anchored[current_id][:16]}… for "
                "this event (rewritten and re-hashed)",
            )
        if result.last_event_id is not None and current_id <= result.last_event_id:
            raise _Bad(number, f"{label}: event ids do not increase (lines reordered or id edited)")
        previous = stored
        result.events += 1
        result.last_event_id = current_id
        result.last_hash = stored
        if current_id in anchored:
            covered[current_id] = result.events
    return covered


def _hold_to_anchors(
    result: CheckResult, given: list[tuple[int, anchor_log.Anchor]], covered: dict[int, int]
) -> str | None:
    """Each anchor's coverage of the checked file, or the problem that fails the file."""
    first, last = result.first_event_id, result.last_event_id
    problem = None
    for number, anchor in given:
        lines = covered.get(anchor.event_id, 0) if anchor.event_id is not None else 0
        result.anchors.append(AnchorCoverage(line=number, event_id=anchor.event_id, lines=lines))
        inside = anchor.event_id is not None and first is not None and last is not None
        if inside and first <= anchor.event_id <= last and not lines and problem is None:
            problem = (
                f"the anchor on line {number} names event {anchor.event_id}, inside the file's "
                "id range, and no line is that event (lines dropped, or ids shifted)"
            )
    result.anchored_lines = max((a.lines for a in result.anchors), default=0)
    return problem


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def check_export(
    path_or_file: str | os.PathLike | IO[str],
    *,
    fmt: str | None = None,
    expect_first_prev: str | None = None,
    expect_last_hash: str | None = None,
    anchors: list[tuple[int, anchor_log.Anchor]] | None = None,
    require_anchor: bool = False,
) -> CheckResult:
    """Check an exported file offline; see the module docstring for the rules.

    ``fmt`` is detected from the content when not given (a ``{`` first means JSON Lines).
    ``expect_first_prev`` / ``expect_last_hash`` anchor the file's ends to values taken from
    the ledger, which also catches lines removed at the start or the end. ``anchors`` are
    external anchors with their line numbers (:func:`ledger.anchors.read`): each one's
    signature is checked with the configured keys (refused without one), a line of an
    anchored event must carry the anchored hash — which catches a rewritten and re-hashed file
    — and each anchor's coverage is reported. With ``require_anchor`` a file no anchor covers
    is not OK.
    """
    keys = anchor_log.require_keys("check-export") if anchors else {}
    forged = []
    for number, anchor in anchors or []:
        problem = anchor_log.signature_problem(anchor, keys)
        if problem:
            forged.append(f"the anchor on line {number}: {problem}")
    trusted = [(n, a) for n, a in anchors or [] if not anchor_log.signature_problem(a, keys)]
    anchored = {a.event_id: a.event_hash for _, a in trusted if a.event_id is not None}
    if isinstance(path_or_file, str | os.PathLike):
        require_regular_file(str(path_or_file), "export")
        try:
            handle = open(path_or_file, encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as error:
            raise NotFound(f"check-export: cannot read {path_or_file}: {error.strerror}") from None
        close = True
    else:
        handle, close = path_or_file, False
    try:
        if fmt is None:
            if handle.seekable():
                start = handle.tell()
                fmt = _detect(handle)
                handle.seek(start)
            else:  # pragma: no cover - pipes
                data = handle.read()
                fmt = _detect(io.StringIO(data))
                handle = io.StringIO(data)
        if fmt not in FORMATS:
            raise LedgerError(f"check-export: unknown format {fmt!r}; use jsonl or csv")
        result = CheckResult(ok=True, format=fmt, events=0)
        try:
            covered = _check(handle, fmt, result, anchored)
        except _Bad as bad:
            result.ok = False
            result.first_bad_line = bad.line
            result.problem = bad.message
            return result
        except UnicodeDecodeError as error:
            result.ok = False
            result.problem = f"not UTF-8 text ({error.reason})"
            return result
    finally:
        if close:
            handle.close()
    anchor_problem = _hold_to_anchors(result, trusted, covered) if anchors else None
    if result.events == 0:
        result.ok = False
        result.problem = "the file holds no events"
    elif forged:
        result.ok = False
        result.problem = forged[0]
    elif anchor_problem:
        result.ok = False
        result.problem = anchor_problem
    elif expect_first_prev is not None and result.first_prev_hash != expect_first_prev:
        result.ok = False
        result.first_bad_line = 1
        result.problem = (
            "the first line's prev_hash is not the expected anchor "
            "(lines are missing at the start, or the file is another segment)"
        )
    elif expect_last_hash is not None and result.last_hash != expect_last_hash:
        result.ok = False
        result.problem = (
            "the last line's hash is not the expected anchor "
            "(lines are missing at the end, or the file is another segment)"
        )
    elif require_anchor and not result.anchored_lines:
        result.ok = False
        result.problem = (
            "no anchor covers any line of the file"
            + (" (none names an event in it)" if anchors else " (no anchors given)")
            + "; check it against a later anchor log, or say --no-anchors to check the "
            "chain alone"
        )
    return result
