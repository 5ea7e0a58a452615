"""Auditor subcommands: ``history``, ``batches``, ``show``, ``verify``, ``export``,
``check-export``. They only read (:mod:`ledger.selectors`, :mod:`ledger.verify`,
:mod:`ledger.export`); see ``docs/auditing.md``.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec
from django.core.management.base import OutputWrapper

from ledger import export, selectors, verify
from ledger.cli.output import Output
from ledger.errors import LedgerError
from ledger.models import BatchState

_encoder = msgspec.json.Encoder(decimal_format="string")
_TABLE_SAMPLE = 500


def add_parsers(subparsers) -> None:
    history = subparsers.add_parser(
        "history", help="Events of a visit, xform, completed work, access, opportunity or batch."
    )
    which = history.add_mutually_exclusive_group(required=True)
    which.add_argument("--visit", metavar="ID")
    which.add_argument("--xform-id", metavar="X")
    which.add_argument("--completed-work", metavar="ID")
    which.add_argument("--access", metavar="ID")
    which.add_argument("--opportunity", metavar="UUID")
    which.add_argument("--batch", metavar="ID")
    history.add_argument(
        "--as-of",
        metavar="ISO-TIME",
        help="Each entity's status at that moment, from the events (naive times are UTC).",
    )
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=handle_history)

    batches = subparsers.add_parser("batches", help="Batches, newest first, with counts.")
    batches.add_argument("--state", choices=BatchState.values)
    batches.add_argument("--limit", type=int, default=200)
    batches.add_argument("--json", action="store_true")
    batches.set_defaults(handler=handle_batches)

    show = subparsers.add_parser("show", help="One batch: scope, counts, recomputes, lineage.")
    show.add_argument("--batch", required=True, metavar="ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=handle_show)

    check = subparsers.add_parser("verify", help="Check the ledger's invariants on live data.")
    check.add_argument(
        "--check",
        action="append",
        choices=verify.CHECKS,
        dest="checks",
        help="Run only this check (repeatable); all by default.",
    )
    check.add_argument(
        "--anchors",
        metavar="FILE",
        help="Hold the chain to these external anchors (corrections anchor).",
    )
    check.add_argument(
        "--sample",
        type=int,
        default=verify.DEFAULT_SAMPLE,
        metavar="N",
        help=f"Accesses whose accrual is recomputed (default {verify.DEFAULT_SAMPLE}; 0: all).",
    )
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=handle_verify)

    exp = subparsers.add_parser(
        "export", help="Stream a batch's or a time range's events, with chain hashes, to stdout."
    )
    segment = exp.add_mutually_exclusive_group(required=True)
    segment.add_argument("--batch", metavar="ID")
    segment.add_argument("--since", metavar="ISO-TIME")
    exp.add_argument("--until", metavar="ISO-TIME")
    exp.add_argument("--format", choices=export.FORMATS, default="jsonl", dest="fmt")
    exp.set_defaults(handler=handle_export)

    check_export = subparsers.add_parser(
        "check-export", help="Check an exported file offline (edited, dropped, reordered lines)."
    )
    check_export.add_argument("file", metavar="FILE")
    check_export.add_argument("--format", choices=export.FORMATS, dest="fmt")
    check_export.add_argument("--first-prev", metavar="HASH", help="Expected first prev_hash.")
    check_export.add_argument("--last-hash", metavar="HASH", help="Expected last hash.")
    check_export.add_argument(
        "--anchors", metavar="FILE", help="External anchors the file's events must match."
    )
    check_export.add_argument("--json", action="store_true")
    check_export.set_defaults(handler=handle_check_export)


# --------------------------------------------------------------------------------------------
# Streaming output
# --------------------------------------------------------------------------------------------


def stream_table(out: Output, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Like ``Output.table`` but streamed: widths come from the first rows."""
    rows = iter(rows)
    sample = [
        ["" if v is None else str(v) for v in row] for row in itertools.islice(rows, _TABLE_SAMPLE)
    ]
    widths = [len(h) for h in headers]
    for row in sample:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out.line(fmt.format(*headers).rstrip())
    out.line(fmt.format(*("-" * w for w in widths)).rstrip())
    count = 0
    for row in itertools.chain(sample, (["" if v is None else str(v) for v in r] for r in rows)):
        out.line(fmt.format(*row).rstrip())
        count += 1
    return count


class RawStream:
    """Write text as is: Django's ``OutputWrapper`` would append a newline to each fragment."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._raw = isinstance(stream, OutputWrapper)

    def write(self, text: str) -> int:
        if self._raw:
            self._stream.write(text, ending="")
        else:
            self._stream.write(text)
        return len(text)


def stream_json_object(out: Output, head: dict[str, Any], key: str, items: Iterator) -> None:
    """Write ``{**head, key: [items…]}`` as one JSON line, encoding item by item."""
    write = RawStream(out.stdout).write
    prefix = _encoder.encode(head).decode()[:-1]
    write(prefix + ("," if head else "") + _encoder.encode(key).decode() + ":[")
    for n, item in enumerate(items):
        write(("," if n else "") + _encoder.encode(item).decode())
    write("]}\n")


def stops_quietly_on_closed_pipe(handler: Callable[[dict, Output], int]):
    """``corrections export … | head`` closes the pipe early; that is not an error."""

    @functools.wraps(handler)
    def wrapper(options: dict, out: Output) -> int:
        try:
            return handler(options, out)
        except BrokenPipeError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):  # pragma: no cover - stdout is not a real file
                pass
            return 0

    return wrapper


# --------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------

_SELECTOR_OPTIONS = (
    ("visit", "visit"),
    ("xform_id", "xform_id"),
    ("completed_work", "completed_work"),
    ("access", "access"),
    ("opportunity", "opportunity"),
    ("batch", "batch"),
)


def _selection(options: dict) -> tuple[str, str]:
    for option, kind in _SELECTOR_OPTIONS:
        if options.get(option) is not None:
            return kind, options[option]
    raise LedgerError(
        "history needs one of --visit, --xform-id, --completed-work, --access, "
        "--opportunity, --batch"
    )


def _lineage(e: selectors.HistoryEvent) -> str:
    parts = []
    if e.inverts is not None:
        parts.append(f"inverts #{e.inverts} (batch {e.batch_reverts})")
    if e.inverted_by is not None:
        parts.append(f"undone by #{e.inverted_by} in batch {e.inverted_in_batch}")
    elif e.batch_reverted_by is not None:
        parts.append(f"batch reverted by {e.batch_reverted_by} (this entity skipped)")
    return "; ".join(parts)


def _when(value) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


@stops_quietly_on_closed_pipe
def handle_history(options: dict, out: Output) -> int:
    kind, value = _selection(options)
    as_of = selectors.parse_time(options["as_of"]) if options.get("as_of") else None
    resolved = selectors.resolve(kind, value)
    selector = msgspec.to_builtins(resolved.selector)
    if as_of is not None:
        statuses = selectors.iter_status_as_of(resolved, as_of)
        if options.get("json"):
            head = {"selector": selector, "as_of": msgspec.to_builtins(as_of), "events": None}
            stream_json_object(out, head, "statuses", statuses)
            return 0
        out.line(f"Status of each entity as of {as_of.isoformat()} ({kind} {value}), from events:")
        n = stream_table(
            out,
            ["entity", "id", "status", "from", "event", "recorded at"],
            (
                (
                    s.entity_kind,
                    s.entity_id,
                    s.status,
                    "to_status of" if s.basis == "event" else "before first event",
                    s.event_id,
                    _when(s.event_recorded_at),
                )
                for s in statuses
            ),
        )
        if not n:
            out.line("(no corrections recorded for this selection)")
        return 0

    events = selectors.iter_history(resolved)
    if options.get("json"):
        stream_json_object(
            out, {"selector": selector, "as_of": None, "statuses": None}, "events", events
        )
        return 0
    n = stream_table(
        out,
        ["event", "recorded at", "batch", "planner", "planned by", "applied by", "entity",
         "id", "from → to", "reason", "undo lineage"],
        (
            (e.id, _when(e.recorded_at), e.batch, e.planner, e.planned_by, e.applied_by,
             e.entity_kind, e.entity_id, f"{e.from_status} → {e.to_status}", e.reason,
             _lineage(e))
            for e in events
        ),
    )  # fmt: skip
    if not n:
        out.line(f"(no corrections recorded for {kind.replace('_', ' ')} {value})")
    return 0


# --------------------------------------------------------------------------------------------
# batches / show
# --------------------------------------------------------------------------------------------


def _lineage_text(b: selectors.BatchRow) -> str:
    parts = []
    if b.reverts:
        parts.append(f"reverts {b.reverts}")
    if b.reverted_by:
        parts.append(f"reverted by {b.reverted_by} ({b.reverted_by_state})")
    return "; ".join(parts)


def handle_batches(options: dict, out: Output) -> int:
    limit = options.get("limit") or 200
    if limit < 1:
        raise LedgerError("--limit must be at least 1")
    listing = selectors.list_batches(limit=limit, state=options.get("state"))
    if options.get("json"):
        out.json(listing)
        return 0
    if not listing.batches:
        out.line("No batches.")
        return 0
    out.table(
        ["batch", "planner", "state", "created", "planned by", "applied by", "events",
         "visits", "works", "recomputes", "skipped", "ticket", "reason", "lineage"],
        [
            (b.id, b.planner, b.state, _when(b.created_at), b.planned_by, b.applied_by,
             b.events, b.visits, b.works,
             f"{b.recomputes_done}/{b.recomputes_done + b.recomputes_pending}",
             b.skipped_conflicts or "", b.ticket, b.reason, _lineage_text(b))
            for b in listing.batches
        ],
    )  # fmt: skip
    if listing.more:
        out.line(f"(only the newest {listing.limit}; use --limit)")
    return 0


def handle_show(options: dict, out: Output) -> int:
    detail = selectors.show_batch(options["batch"])
    if options.get("json"):
        out.json(detail)
        return 0
    b = detail.batch
    out.line(f"Batch {b.id}")
    rows = [
        ("planner", b.planner),
        ("state", b.state),
        ("reason", b.reason),
        ("ticket", b.ticket or "—"),
        ("planned by", f"{b.planned_by} at {_when(b.created_at)}"),
        ("applied by", f"{b.applied_by} at {_when(b.applied_at)}" if b.applied_by else "—"),
        ("undone at", _when(b.undone_at) or "—"),
        ("discarded at", _when(b.discarded_at) or "—"),
        ("reverts", b.reverts or "—"),
        ("reverted by", f"{b.reverted_by} ({b.reverted_by_state})" if b.reverted_by else "—"),
        ("scope", _encoder.encode(detail.scope).decode()),
        ("plan digest", detail.plan_digest),
        (
            "planned",
            f"{detail.planned.works} works, {detail.planned.visits} visits"
            + (
                "; excluded: "
                + ", ".join(
                    f"{e.reason} {e.works} works, {e.visits} visits"
                    for e in detail.planned.excluded
                )
                if detail.planned.excluded
                else ""
            ),
        ),
        (
            "events",
            f"{b.events} ({b.works} completed works, {b.visits} visits, {b.accesses} accesses)",
        ),
        ("event ids", f"{detail.first_event_id}–{detail.last_event_id}" if b.events else "—"),
        ("first prev_hash", detail.first_prev_hash or "—"),
        ("last hash", detail.last_hash or "—"),
        (
            "recomputes",
            f"{b.recomputes_done} done, {b.recomputes_pending} pending",
        ),
        ("skipped conflicts", str(b.skipped_conflicts)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.line(f"  {key:<{width}}  {value}")
    if detail.skipped_conflicts:
        out.line("")
        out.line("Skipped conflicts:")
        for c in detail.skipped_conflicts:
            if isinstance(c, dict):
                out.line(
                    f"  {c.get('entity_kind')} {c.get('entity_id')}: expected "
                    f"{c.get('expected_status')}, found {c.get('found_status')}"
                )
            else:
                out.line(f"  {c}")
    if detail.recomputes:
        out.line("")
        out.table(
            ["access", "opportunity", "state", "accrual before", "projected", "after", "done at"],
            [
                (r.access_id, r.opportunity_id, r.state, r.accrual_before, r.projected_after,
                 r.accrual_after, _when(r.done_at))
                for r in detail.recomputes
            ],
        )  # fmt: skip
    return 0


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def handle_verify(options: dict, out: Output) -> int:
    if options.get("sample") is not None and options["sample"] < 0:
        raise LedgerError("--sample takes a number of accesses, 0 for all")
    report = verify.run_checks(
        options.get("checks"), sample=options.get("sample") or None, anchors=options.get("anchors")
    )
    if options.get("json"):
        out.json(report)
        return 0 if report.ok else 1
    out.table(
        ["check", "result", "checked", "problems", "seconds", "note"],
        [
            (c.name, "ok" if c.ok else "FAIL", c.checked, c.problems, f"{c.seconds:.3f}", c.note)
            for c in report.checks
        ],
    )
    head = report.head
    if head.last_event_id is not None:
        out.line(f"Chain head: event {head.last_event_id}, hash {head.last_hash}")
    if report.problems:
        out.line("")
        out.table(
            ["check", "entity", "event", "batch", "expected", "found", "problem"],
            [
                (
                    p.check,
                    f"{p.entity_kind} {p.entity_id}" if p.entity_kind else "",
                    p.event_id,
                    p.batch,
                    p.expected,
                    p.found,
                    p.message,
                )
                for p in report.problems
            ],
        )
    out.line("")
    out.line("Ledger verified: all checks passed." if report.ok else "Ledger verification FAILED.")
    return 0 if report.ok else 1


# --------------------------------------------------------------------------------------------
# export / check-export
# --------------------------------------------------------------------------------------------


@stops_quietly_on_closed_pipe
def handle_export(options: dict, out: Output) -> int:
    batch = since = until = None
    if options.get("batch"):
        if options.get("until"):
            raise LedgerError("export: --until goes with --since, not --batch")
        batch = selectors.get_batch(options["batch"]).pk
    else:
        since = selectors.parse_time(options["since"], "--since")
        if options.get("until"):
            until = selectors.parse_time(options["until"], "--until")
    summary = export.export_events(
        RawStream(out.stdout), batch=batch, since=since, until=until, fmt=options["fmt"]
    )
    out.progress(
        f"exported {summary.events} events"
        + (
            f" ({summary.first_event_id}–{summary.last_event_id}); first prev_hash "
            f"{summary.first_prev_hash}, last hash {summary.last_hash}"
            if summary.events
            else ""
        )
    )
    return 0


def handle_check_export(options: dict, out: Output) -> int:
    anchored = None
    if options.get("anchors"):
        from ledger import anchors

        anchored = anchors.expected_hashes(anchors.read(options["anchors"]))
    result = export.check_export(
        options["file"],
        fmt=options.get("fmt"),
        expect_first_prev=options.get("first_prev"),
        expect_last_hash=options.get("last_hash"),
        anchored=anchored,
    )
    if options.get("json"):
        out.json(result)
    elif result.ok:
        out.line(
            f"OK: {result.events} events ({result.format}), ids "
            f"{result.first_event_id}–{result.last_event_id}; hashes and chain links verified."
        )
        if result.events:
            anchor = " (the start of the ledger)" if result.starts_at_genesis else ""
            out.line(f"  first prev_hash: {result.first_prev_hash}{anchor}")
            out.line(f"  last hash:       {result.last_hash}")
    if not result.ok:
        where = f"line {result.first_bad_line}: " if result.first_bad_line else ""
        problem = result.problem or "invalid"
        if problem.startswith(f"line {result.first_bad_line}"):
            where = ""
        out.stderr.write(f"corrections: check-export {options['file']}: {where}{problem}\n")
        return 1
    return 0
