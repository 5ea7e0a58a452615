"""Auditor subcommands: ``history``, ``batches``, ``show``, ``verify``, ``export``,
``check-export``. They only read (:mod:`ledger.selectors`, :mod:`ledger.verify`,
:mod:`ledger.export`); see ``docs/auditing.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from ledger import export, selectors, verify
from ledger.cli import inputs
from ledger.cli.failure import Findings
from ledger.cli.operate import _wrap, plan_from_summary, print_money
from ledger.cli.output import Output, OutputClosed, clip
from ledger.errors import LedgerError
from ledger.files import require_regular_file
from ledger.models import BatchState

_encoder = msgspec.json.Encoder(decimal_format="string")
DEFAULT_LIMIT = 200


def _json(parser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="Print one JSON object on stdout (docs/json-schema.md)."
    )


def _wide(parser) -> None:
    parser.add_argument(
        "--wide", action="store_true", help="Full ids and untruncated text in tables."
    )


def add_parsers(subparsers) -> None:
    history = subparsers.add_parser(
        "history",
        help="Events of a visit, xform, completed work, access, opportunity or batch.",
        description="Who changed an entity's status, when, why, in which batch, and whether "
        "it was undone; with --as-of, each entity's status at that moment.",
    )
    which = history.add_mutually_exclusive_group(required=True)
    which.add_argument("--visit", metavar="ID", help="A visit (UserVisit.id).")
    which.add_argument("--xform-id", metavar="X", help="The visit(s) with this xform id.")
    which.add_argument("--completed-work", metavar="ID", help="A completed work and its visits.")
    which.add_argument("--access", metavar="ID", help="Every event of one worker's access.")
    which.add_argument(
        "--opportunity", metavar="UUID", help="Every event of an opportunity (UUID or integer id)."
    )
    which.add_argument("--batch", metavar="ID", help="Every event of a batch (UUID or 8+ chars).")
    history.add_argument(
        "--as-of",
        metavar="ISO-TIME",
        help="Each entity's status at that moment, from the events (naive times are UTC).",
    )
    _json(history)
    _wide(history)
    history.set_defaults(handler=handle_history)

    batches = subparsers.add_parser(
        "batches", help="Batches, newest first, with counts, operators and lineage."
    )
    batches.add_argument("--state", choices=BatchState.values, help="Only batches in this state.")
    batches.add_argument(
        "--limit",
        metavar="N",
        default=str(DEFAULT_LIMIT),
        help=f"How many batches, newest first (1 to {inputs.MAX_LIMIT}).",
    )
    _json(batches)
    _wide(batches)
    batches.set_defaults(handler=handle_batches)

    show = subparsers.add_parser(
        "show",
        help="One batch: scope, priced plan, counts, anchors, recomputes, lineage.",
        description="One batch: who planned, approved and applied it, its priced plan per "
        "opportunity and currency, its chain segment, and each access's recompute.",
    )
    show.add_argument(
        "--batch", required=True, metavar="ID", help="The batch: its UUID, or 8+ characters."
    )
    _json(show)
    _wide(show)
    show.set_defaults(handler=handle_show)

    check = subparsers.add_parser(
        "verify",
        help="Check the ledger's invariants on live data (exit 1 when a check fails).",
    )
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
        metavar="N",
        default=str(verify.DEFAULT_SAMPLE),
        help="Accesses whose accrual is recomputed (0: all).",
    )
    _json(check)
    _wide(check)
    check.set_defaults(handler=handle_verify)

    exp = subparsers.add_parser(
        "export",
        help="Stream a batch's or a time range's events, with chain hashes, to stdout.",
    )
    segment = exp.add_mutually_exclusive_group(required=True)
    segment.add_argument("--batch", metavar="ID", help="One batch's events (UUID or 8+ chars).")
    segment.add_argument(
        "--since", metavar="ISO-TIME", help="Events recorded at or after this time."
    )
    exp.add_argument(
        "--until", metavar="ISO-TIME", help="With --since: events recorded before this time."
    )
    exp.add_argument(
        "--format", choices=export.FORMATS, default="jsonl", dest="fmt", help="Output format."
    )
    exp.set_defaults(handler=handle_export)

    check_export = subparsers.add_parser(
        "check-export",
        help="Check an exported file offline (edited, dropped, reordered lines); exit 1 if bad.",
    )
    check_export.add_argument("file", metavar="FILE", help="The exported file (jsonl or csv).")
    check_export.add_argument(
        "--format",
        choices=export.FORMATS,
        dest="fmt",
        help="The file's format (detected from its content by default).",
    )
    check_export.add_argument(
        "--first-prev", metavar="HASH", help="Expected prev_hash of the first line (64 hex)."
    )
    check_export.add_argument(
        "--last-hash", metavar="HASH", help="Expected hash of the last line (64 hex)."
    )
    anchoring = check_export.add_mutually_exclusive_group()
    anchoring.add_argument(
        "--anchors",
        metavar="FILE",
        help="External anchors (corrections anchor) to hold the file to: their signatures are "
        "checked with the configured keys, and the file fails unless one covers it.",
    )
    anchoring.add_argument(
        "--no-anchors",
        action="store_true",
        help="Check the hashes and chain links alone; the file is then not anchored.",
    )
    _json(check_export)
    check_export.set_defaults(handler=handle_check_export)


# --------------------------------------------------------------------------------------------
# Streaming output
# --------------------------------------------------------------------------------------------


def stream_json_object(out: Output, head: dict[str, Any], key: str, items: Iterator) -> None:
    """Write ``{**head, key: [items…]}`` as one JSON line, encoding item by item."""
    prefix = _encoder.encode(head).decode()[:-1]
    try:
        out.write(prefix + ("," if head else "") + _encoder.encode(key).decode() + ":[")
        for n, item in enumerate(items):
            out.write(("," if n else "") + _encoder.encode(item).decode())
        out.write("]}\n")
    except OutputClosed:
        pass


# --------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------

_SELECTOR_OPTIONS = ("visit", "xform_id", "completed_work", "access", "opportunity", "batch")


def _selection(options: dict) -> tuple[str, str]:
    for kind in _SELECTOR_OPTIONS:
        value = options.get(kind)
        if value is None:
            continue
        if kind == "visit":
            return kind, str(inputs.entity_id(value, "--visit"))
        if kind == "completed_work":
            return kind, str(inputs.entity_id(value, "--completed-work"))
        if kind == "access":
            return kind, str(inputs.entity_id(value, "--access"))
        if kind == "xform_id":
            return kind, inputs.xform_id(value)
        if kind == "opportunity":
            return kind, inputs.opportunity(value)
        return kind, inputs.batch_id(value)
    raise LedgerError(
        "history needs one of --visit, --xform-id, --completed-work, --access, "
        "--opportunity, --batch"
    )


def _lineage(e: selectors.HistoryEvent, short, wide: bool = True) -> str:
    """The undo lineage of an event; without --wide, by event ids only (the batches are one
    ``history --batch`` away)."""
    parts = []
    if e.inverts is not None:
        parts.append(
            f"inverts #{e.inverts} (batch {short(e.batch_reverts)})" if wide else
            f"inverts #{e.inverts}"
        )  # fmt: skip
    if e.inverted_by is not None:
        parts.append(
            f"undone by #{e.inverted_by} in batch {short(e.inverted_in_batch)}" if wide else
            f"undone by #{e.inverted_by}"
        )  # fmt: skip
    elif e.batch_reverted_by is not None:
        parts.append(f"batch reverted by {short(e.batch_reverted_by)} (this entity skipped)")
    return "; ".join(parts)


def _when(value) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def _stamp(value, out: Output) -> str:
    """A time in a table: to the second, and without the +00:00 unless --wide."""
    text = _when(value)
    return text if out.wide else text.removesuffix("+00:00").replace("T", " ")


def handle_history(options: dict, out: Output) -> None:
    kind, value = _selection(options)
    as_of = inputs.moment(options.get("as_of"), "--as-of")
    resolved = selectors.resolve(kind, value)
    selector = msgspec.to_builtins(resolved.selector)
    if as_of is not None:
        statuses = selectors.iter_status_as_of(resolved, as_of)
        if out.json_mode:
            head = {"selector": selector, "as_of": msgspec.to_builtins(as_of), "events": None}
            stream_json_object(out, head, "statuses", statuses)
            return
        shown = out.short(value) if kind == "batch" else value
        out.line(f"Status as of {as_of.isoformat()} of {kind.replace('_', ' ')} {shown}:")
        n = out.table(
            ["entity", "id", "status", "from", "event", "recorded at"],
            (
                (
                    s.entity_kind,
                    s.entity_id,
                    s.status,
                    "to_status of" if s.basis == "event" else "before first event",
                    s.event_id,
                    _stamp(s.event_recorded_at, out),
                )
                for s in statuses
            ),
        )
        if not n:
            out.line("(no corrections recorded for this selection)")
        return

    events = selectors.iter_history(resolved)
    if out.json_mode:
        stream_json_object(
            out, {"selector": selector, "as_of": None, "statuses": None}, "events", events
        )
        return
    if out.wide:
        headers = ["event", "recorded at", "batch", "planner", "planned by", "applied by",
                   "entity", "id", "from → to", "reason", "undo lineage"]  # fmt: skip
        rows = (
            (e.id, _when(e.recorded_at), e.batch, e.planner, e.planned_by, e.applied_by,
             e.entity_kind, e.entity_id, f"{e.from_status} → {e.to_status}", e.reason,
             _lineage(e, out.short))
            for e in events
        )  # fmt: skip
    else:  # the planner is the batch's (batches, show); to the minute; who applied it
        headers = ["event", "recorded at", "batch", "by", "kind", "id", "from → to", "reason",
                   "lineage"]  # fmt: skip
        rows = (
            (e.id, _stamp(e.recorded_at, out)[:16], out.short(e.batch),
             e.applied_by or e.planned_by, e.entity_kind.replace("completed_work", "work"),
             e.entity_id, f"{e.from_status} → {e.to_status}", e.reason,
             _lineage(e, out.short, wide=False))
            for e in events
        )  # fmt: skip
    n = out.table(headers, rows, shrink=["reason", "lineage", "undo lineage", "by"])
    if not n:
        out.line(f"(no corrections recorded for {kind.replace('_', ' ')} {value})")


# --------------------------------------------------------------------------------------------
# batches / show
# --------------------------------------------------------------------------------------------


def _lineage_text(b: selectors.BatchRow, short) -> str:
    parts = []
    if b.reverts:
        parts.append(f"reverts {short(b.reverts)}")
    if b.reverted_by:
        parts.append(f"reverted by {short(b.reverted_by)} ({b.reverted_by_state})")
    return "; ".join(parts)


def handle_batches(options: dict, out: Output) -> None:
    limit = inputs.bounded_int(options["limit"], "--limit", low=1, high=inputs.MAX_LIMIT)
    listing = selectors.list_batches(limit=limit, state=options.get("state"))
    if out.json_mode:
        out.json(listing)
        return
    if not listing.batches:
        out.line("No batches.")
        return
    if out.wide:
        headers = ["batch", "planner", "state", "created", "planned by", "applied by",
                   "events", "visits", "works", "recomputes", "skipped", "ticket", "reason",
                   "lineage"]  # fmt: skip
        rows = [
            (b.id, b.planner, b.state, _when(b.created_at), b.planned_by, b.applied_by,
             b.events, b.visits, b.works,
             f"{b.recomputes_done}/{b.recomputes_done + b.recomputes_pending}",
             b.skipped_conflicts or "", b.ticket, b.reason, _lineage_text(b, out.short))
            for b in listing.batches
        ]  # fmt: skip
    else:
        # Lineage, visits, works and skipped conflicts: show --batch, or --wide.
        headers = ["batch", "planner", "state", "created", "by", "events", "recomp", "ticket",
                   "reason"]  # fmt: skip
        rows = [
            (out.short(b.id), b.planner, b.state, _stamp(b.created_at, out)[:16],
             b.applied_by or b.planned_by, b.events,
             f"{b.recomputes_done}/{b.recomputes_done + b.recomputes_pending}", b.ticket,
             b.reason)
            for b in listing.batches
        ]  # fmt: skip
    out.table(headers, rows, shrink=["reason", "ticket", "lineage", "by"])
    if listing.more:
        out.line(f"(only the newest {listing.limit}; use --limit)")


def handle_show(options: dict, out: Output) -> None:
    detail = selectors.show_batch(inputs.batch_id(options["batch"]))
    if out.json_mode:
        out.json(detail)
        return
    b = detail.batch
    out.line(f"Batch {b.id}")
    from ledger.models import CorrectionBatch

    approved = (
        CorrectionBatch.objects.filter(pk=b.id).values_list("approved_by", "approved_at").first()
    )
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
        ("recomputes", selectors.describe_recomputes(b)),
        ("skipped conflicts", str(b.skipped_conflicts)),
    ]
    if approved and approved[0]:
        rows.insert(5, ("approved by", f"{approved[0]} at {_when(approved[1])}"))
    out.pairs(rows)
    plan = plan_from_summary(detail.summary)
    if plan is not None and plan.accesses:
        out.line("")
        out.line(
            f"Priced plan: {plan.totals.works} works and {plan.totals.visits} visits across "
            f"{plan.totals.accesses} accesses ({plan.totals.suspended_accesses} suspended)"
        )
        print_money(plan.accesses, plan.totals, out)
    if detail.skipped_conflicts:
        out.line("")
        out.line("Skipped conflicts:")
        for c in detail.skipped_conflicts:
            if isinstance(c, dict):
                out.line(
                    clip(
                        f"  {c.get('entity_kind')} {c.get('entity_id')}: expected "
                        f"{c.get('expected_status')}, found {c.get('found_status')}",
                        out.width if not out.wide else 10_000,
                    )
                )
            else:
                out.line(f"  {c}")
    if detail.recomputes:
        out.line("")
        out.line("Accrual recomputes:")
        out.table(
            ["access", "opportunity", "state", "accrual before", "projected", "after", "done at",
             "tries"],
            [
                (r.access_id, r.opportunity_id, recompute_state(r), r.accrual_before,
                 r.projected_after, r.accrual_after, _stamp(r.done_at, out), r.attempts or "")
                for r in detail.recomputes
            ],
        )  # fmt: skip
        problems = [r for r in detail.recomputes if r.state == "pending" and r.last_error]
        if problems:
            last = max(problems, key=lambda r: r.last_tried_at or r.created_at)
            _wrap(out, f"Last problem (access {last.access_id}): {last.last_error}")


def recompute_state(r) -> str:
    """A recompute row's state, with why a pending one waits: ``pending, busy``."""
    if r.state != "pending":
        return r.state
    if r.last_problem:
        return f"pending, {r.last_problem}"
    return "pending, queued" if r.queued_at else "pending"


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def _anchors_file(options: dict) -> str | None:
    if options.get("anchors") is None:
        return None
    path = inputs.path(options["anchors"], "--anchors")
    if path == "-":
        raise LedgerError("--anchors takes a file (the anchor log), not -")
    require_regular_file(path, "anchor")
    return path


def handle_verify(options: dict, out: Output) -> None:
    sample = inputs.bounded_int(options["sample"], "--sample", low=0, high=inputs.MAX_SAMPLE)
    anchors = _anchors_file(options)
    if anchors is not None:
        from ledger import anchors as anchor_log

        anchor_log.read(anchors)  # refuse a bad anchor file before any check runs
    out.progress("verifying the ledger")
    report = verify.run_checks(options.get("checks"), sample=sample or None, anchors=anchors)
    failed = [c.name for c in report.checks if not c.ok]
    if out.json_mode:
        out.json(report)
    else:
        out.table(
            ["check", "result", "checked", "problems", "seconds", "note"],
            [
                (c.name, "ok" if c.ok else "FAIL", c.checked, c.problems, f"{c.seconds:.3f}",
                 c.note)
                for c in report.checks
            ],
            shrink=["note"],
        )  # fmt: skip
        head = report.head
        if head.last_event_id is not None:
            out.line(f"Chain head: event {head.last_event_id}, hash {head.last_hash}")
        if report.problems:
            out.line("")
            out.table(
                ["check", "entity", "event", "batch", "expected", "found", "problem"],
                [
                    (p.check, f"{p.entity_kind} {p.entity_id}" if p.entity_kind else "",
                     p.event_id, out.short(p.batch), p.expected, p.found, p.message)
                    for p in report.problems
                ],
                shrink=["problem", "expected", "found"],
            )  # fmt: skip
        out.line("")
        out.line(
            "Ledger verified: all checks passed." if report.ok else "Ledger verification FAILED."
        )
    if not report.ok:
        raise Findings(f"verify: {len(failed)} checks failed: {', '.join(failed)}")


# --------------------------------------------------------------------------------------------
# export / check-export
# --------------------------------------------------------------------------------------------


class _Stream:
    """The file-like object export writes to: Output's stdout, stopping when it closes."""

    def __init__(self, out: Output) -> None:
        self._out = out

    def write(self, text: str) -> int:
        self._out.write(text)
        return len(text)


def handle_export(options: dict, out: Output) -> None:
    batch = since = until = None
    if options.get("batch") is not None:
        if options.get("until") is not None:
            raise LedgerError("export: --until goes with --since, not --batch")
        batch = selectors.get_batch(inputs.batch_id(options["batch"])).pk
    else:
        since = inputs.moment(options["since"], "--since")
        until = inputs.moment(options.get("until"), "--until")
        if until is not None and until <= since:
            raise LedgerError("export: --until must be after --since")
    out.progress("exporting events")
    try:
        summary = export.export_events(
            _Stream(out), batch=batch, since=since, until=until, fmt=options["fmt"]
        )
    except OutputClosed:
        return
    out.note(
        f"exported {summary.events} events"
        + (
            f" ({summary.first_event_id}–{summary.last_event_id}); first prev_hash "
            f"{summary.first_prev_hash}, last hash {summary.last_hash}"
            if summary.events
            else ""
        )
    )


def _sniff(path: str) -> None:
    """Refuse a file that is not text before reading it line by line."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as error:
        raise LedgerError(f"cannot read export file {path}: {error.strerror}") from None
    if b"\x00" in head:
        raise LedgerError(f"export file {path} is binary, not an export")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a character cut at the 64 KiB mark
            raise LedgerError(
                f"export file {path} is not UTF-8 text (byte {error.start})"
            ) from None


def _print_coverage(result: export.CheckResult, out: Output, unanchored: bool) -> None:
    if unanchored and not result.anchors:
        out.line("  not anchored (--no-anchors): the hashes and chain links alone were checked")
        return
    for a in result.anchors:
        out.line(f"  anchor on line {a.line} (event {a.event_id}): covers {a.lines} lines")
    rest = result.events - result.anchored_lines
    out.line(
        f"  {result.anchored_lines} of {result.events} lines anchored"
        + (f"; the last {rest} are not (a later anchor would cover them)" if rest else "")
    )


def handle_check_export(options: dict, out: Output) -> None:
    path = inputs.path(options["file"], "FILE")
    require_regular_file(path, "export")
    first_prev = last_hash = None
    if options.get("first_prev") is not None:
        first_prev = inputs.hex_digest(options["first_prev"], "--first-prev", exact=64)
    if options.get("last_hash") is not None:
        last_hash = inputs.hex_digest(options["last_hash"], "--last-hash", exact=64)
    given = None
    anchors_path = _anchors_file(options)
    if anchors_path is not None:
        from ledger import anchors

        given = anchors.read(anchors_path)
        anchors.require_keys("check-export")  # no claim of anchoring without the key
    _sniff(path)
    out.progress(f"checking {path}")
    try:
        result = export.check_export(
            path,
            fmt=options.get("fmt"),
            expect_first_prev=first_prev,
            expect_last_hash=last_hash,
            anchors=given,
            require_anchor=not options.get("no_anchors"),
        )
    except UnicodeDecodeError as error:
        raise LedgerError(f"export file {path} is not UTF-8 text ({error.reason})") from None
    except Exception as error:  # csv.Error and the like: the file is not an export
        import csv

        if not isinstance(error, csv.Error):
            raise
        raise LedgerError(f"export file {path} is not a readable CSV export ({error})") from None
    if out.json_mode:
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
        _print_coverage(result, out, options.get("no_anchors"))
    if not result.ok:
        where = f"line {result.first_bad_line}: " if result.first_bad_line else ""
        problem = result.problem or "invalid"
        if problem.startswith(f"line {result.first_bad_line}"):
            where = ""
        raise Findings(f"check-export {path}: {where}{problem}")
