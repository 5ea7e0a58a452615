"""Operator subcommands: ``plan``, ``apply``, ``undo``, ``recompute``, ``discard``."""

from __future__ import annotations

from pathlib import Path

from ledger import services
from ledger.cli.output import Output
from ledger.errors import LedgerError
from ledger.schema import PlanReport, RunReport, ScanReport


def read_lines(path: str, what: str) -> list[str]:
    """Non-blank, non-comment lines of an operator's file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise LedgerError(f"cannot read {what} file {path}: {error.strerror or error}") from None
    return [
        line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()
    ]


def read_ids(path: str, what: str) -> list[int]:
    lines = read_lines(path, what)
    bad = [line for line in lines if not line.isdigit()]
    if bad:
        raise LedgerError(f"{what} file {path} has non-numeric ids: {', '.join(bad[:10])}")
    return [int(line) for line in lines]


def add_parsers(subparsers) -> None:
    plan = subparsers.add_parser("plan", help="Plan a correction (creates a reviewable batch).")
    plans = plan.add_subparsers(dest="planner", required=True)

    over_cap = plans.add_parser("over-cap", help="Completed works past a worker's cap.")
    scope = over_cap.add_mutually_exclusive_group(required=True)
    scope.add_argument("--opportunity", action="append", metavar="UUID", dest="opportunities")
    scope.add_argument("--all", action="store_true", help="Scan every opportunity; report only.")
    over_cap.add_argument("--reason")
    over_cap.add_argument("--ticket", default="")
    over_cap.add_argument("--exclude", metavar="FILE", help="Completed work ids to leave alone.")
    over_cap.add_argument("--include-paid", action="store_true")
    over_cap.add_argument("--skip-suspended", action="store_true")
    _common(over_cap)
    over_cap.set_defaults(handler=handle_plan_over_cap)

    visits = plans.add_parser("visits", help="Listed visits and their completed works.")
    source = visits.add_mutually_exclusive_group(required=True)
    source.add_argument("--xform-ids", metavar="FILE")
    source.add_argument("--visit-ids", metavar="FILE")
    visits.add_argument("--to", default="over_limit", dest="to_status", metavar="STATUS")
    visits.add_argument("--expand", action="store_true", help="Include whole completed works.")
    visits.add_argument("--reason")
    visits.add_argument("--ticket", default="")
    _common(visits)
    visits.set_defaults(handler=handle_plan_visits)

    apply = subparsers.add_parser("apply", help="Apply a planned batch.")
    apply.add_argument("--batch", required=True)
    apply.add_argument("--skip-conflicts", action="store_true")
    _common(apply)
    apply.set_defaults(handler=handle_apply)

    undo = subparsers.add_parser("undo", help="Revert an applied batch with inverse events.")
    undo.add_argument("--batch", required=True)
    undo.add_argument("--reason")
    undo.add_argument("--skip-conflicts", action="store_true")
    _common(undo)
    undo.set_defaults(handler=handle_undo)

    discard = subparsers.add_parser("discard", help="Drop a planned batch without applying.")
    discard.add_argument("--batch", required=True)
    _common(discard)
    discard.set_defaults(handler=handle_discard)

    recompute = subparsers.add_parser("recompute", help="Finish accrual recomputes.")
    which = recompute.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch")
    which.add_argument("--pending", action="store_true")
    recompute.add_argument("--json", action="store_true")
    recompute.set_defaults(handler=handle_recompute)

    schema = subparsers.add_parser("schema", help="Print the JSON Schema of --json output.")
    schema.set_defaults(handler=handle_schema)


def _common(parser) -> None:
    parser.add_argument("--operator", help="Who is acting (default: the OS user).")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout.")


def _progress(options: dict, out: Output):
    return None if options.get("json") else out.progress


def handle_plan_over_cap(options: dict, out: Output) -> int:
    if options["all"]:
        print_scan(services.scan_over_cap(), options, out)
        return 0
    exclude = read_ids(options["exclude"], "exclusion") if options.get("exclude") else ()
    report = services.plan_over_cap(
        options["opportunities"],
        reason=options.get("reason") or "",
        operator=options.get("operator"),
        exclude_work_ids=exclude,
        include_paid=options["include_paid"],
        skip_suspended=options["skip_suspended"],
        ticket=options["ticket"],
    )
    print_plan(report, options, out)
    return 0


def handle_plan_visits(options: dict, out: Output) -> int:
    xform_ids = visit_ids = None
    if options.get("xform_ids"):
        xform_ids = read_lines(options["xform_ids"], "xform id")
    else:
        visit_ids = read_ids(options["visit_ids"], "visit id")
    if not (xform_ids or visit_ids):
        raise LedgerError("the id file lists no ids")
    report = services.plan_visits(
        reason=options.get("reason") or "",
        xform_ids=xform_ids,
        visit_ids=visit_ids,
        to_status=options["to_status"],
        expand=options["expand"],
        operator=options.get("operator"),
        ticket=options["ticket"],
    )
    print_plan(report, options, out)
    return 0


def handle_apply(options: dict, out: Output) -> int:
    report = services.apply_batch(
        options["batch"],
        operator=options.get("operator"),
        skip_conflicts=options["skip_conflicts"],
        progress=_progress(options, out),
    )
    print_run(report, options, out)
    return 0


def handle_undo(options: dict, out: Output) -> int:
    report = services.undo_batch(
        options["batch"],
        reason=options.get("reason") or "",
        operator=options.get("operator"),
        skip_conflicts=options["skip_conflicts"],
        progress=_progress(options, out),
    )
    print_run(report, options, out)
    return 0 if all(a.matches is not False for a in report.accesses) else 1


def handle_discard(options: dict, out: Output) -> int:
    batch = services.discard_batch(options["batch"], operator=options.get("operator"))
    if options.get("json"):
        out.json({"batch": str(batch.pk), "state": batch.state})
    else:
        out.line(f"Batch {batch.pk} discarded.")
    return 0


def handle_recompute(options: dict, out: Output) -> int:
    report = services.recompute_report(
        None if options["pending"] else options["batch"], progress=_progress(options, out)
    )
    if options.get("json"):
        out.json(report)
    else:
        out.line(
            f"Recomputed {report.recomputed} accesses; {report.pending_recomputes} still pending."
        )
    return 0 if report.pending_recomputes == 0 else 1


def handle_schema(options: dict, out: Output) -> int:
    import msgspec

    _, components = msgspec.json.schema_components([PlanReport, ScanReport, RunReport])
    out.json({"$defs": components})
    return 0


def print_plan(report: PlanReport, options: dict, out: Output) -> None:
    if options.get("json"):
        out.json(report)
        return
    if report.batch is None:
        out.line("Nothing to correct: no entity in scope needs a flip.")
    else:
        out.line(f"Planned batch {report.batch} ({report.planner}): {report.reason}")
    if report.accesses:
        out.line("")
        out.table(
            ["access", "worker", "cur", "susp", "works", "visits", "accrual now", "projected",
             "worker Δ", "worker Δ USD", "org Δ", "org Δ USD", "paid", "exposure"],
            [
                (a.access_id, a.worker, a.currency, "yes" if a.suspended else "", a.works,
                 a.visits, a.accrual_now, a.projected_accrual, a.worker_accrual_change,
                 a.worker_accrual_change_usd, a.org_accrual_change, a.org_accrual_change_usd,
                 a.paid_to_date, a.overpayment_exposure or "")
                for a in report.accesses
            ],
        )  # fmt: skip
    if report.exclusions:
        out.line("")
        out.line("Excluded (not flipped):")
        for e in report.exclusions:
            ids = ", ".join(map(str, e.completed_work_ids[:10]))
            more = " …" if len(e.completed_work_ids) > 10 else ""
            out.line(f"  {e.reason}: {e.works} works, {e.visits} visits (works {ids}{more})")
    t = report.totals
    out.line("")
    out.line(
        f"Totals: {t.works} works and {t.visits} visits across {t.accesses} accesses "
        f"({t.suspended_accesses} suspended); {t.excluded_works} works excluded."
    )
    for c in t.by_currency:
        out.line(
            f"  {c.currency}: worker accrual {c.worker_accrual_change:+}, org accrual "
            f"{c.org_accrual_change:+}, paid to date {c.paid_to_date}, "
            f"overpayment exposure {c.overpayment_exposure}"
        )
    out.line(
        f"  All currencies in USD: worker accrual {t.worker_accrual_change_usd:+}, "
        f"org accrual {t.org_accrual_change_usd:+}"
    )
    if report.batch:
        out.line("")
        out.line(f"Review, then: ./manage.py corrections apply --batch {report.batch}")


def print_scan(report: ScanReport, options: dict, out: Output) -> None:
    if options.get("json"):
        out.json(report)
        return
    if not report.opportunities:
        out.line("No opportunity has completed works past a cap.")
        return
    out.line("Over-cap scan (report only; plan per opportunity with --opportunity UUID):")
    out.table(
        ["opportunity", "name", "cur", "accesses", "susp", "works", "visits", "excluded",
         "accrued on them"],
        [
            (o.opportunity, o.name, o.currency, o.accesses, o.suspended_accesses, o.works,
             o.visits, o.excluded_works, o.accrued_on_over_cap_works)
            for o in report.opportunities
        ],
    )  # fmt: skip


def print_run(report: RunReport, options: dict, out: Output) -> None:
    if options.get("json"):
        out.json(report)
        return
    verb = "Undid" if report.action == "undo" else "Applied"
    target = (
        f"batch {report.reverts} with undo batch {report.batch}"
        if report.reverts
        else (f"batch {report.batch}")
    )
    out.line(
        f"{verb} {target}: {report.events} events "
        f"({report.works} completed works, {report.visits} visits)."
    )
    if report.skipped_conflicts:
        out.line(f"Skipped {len(report.skipped_conflicts)} conflicting entities:")
        for c in report.skipped_conflicts:
            out.line(
                f"  {c.entity_kind} {c.entity_id}: expected {c.expected_status}, "
                f"found {c.found_status}"
            )
    if report.accesses:
        if report.action == "undo":
            headers = ["access", "before original apply", "after undo", "state", "restored"]
            rows = [
                (a.access_id, a.accrual_before_original, a.accrual_after, a.state,
                 "yes" if a.matches else "NO")
                for a in report.accesses
            ]  # fmt: skip
        else:
            headers = ["access", "accrual before", "projected", "actual", "state", "as projected"]
            rows = [
                (a.access_id, a.accrual_before, a.projected_accrual, a.accrual_after, a.state,
                 {True: "yes", False: "NO", None: ""}[a.matches])
                for a in report.accesses
            ]  # fmt: skip
        out.table(headers, rows)
    if report.pending_recomputes:
        out.line(
            f"{report.pending_recomputes} recomputes pending: "
            "run ./manage.py corrections recompute --pending"
        )
