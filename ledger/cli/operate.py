"""Operator subcommands: ``plan``, ``apply``, ``undo``, ``recompute``, ``discard``."""

from __future__ import annotations

from ledger import services
from ledger.cli.output import Output
from ledger.errors import LedgerError
from ledger.files import read_ids, read_lines
from ledger.schema import PlanReport, RunReport, ScanReport


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

    approve = subparsers.add_parser(
        "approve", help="Record that you (not the planner) reviewed a batch's priced plan."
    )
    approve.add_argument("--batch", required=True, metavar="ID")
    approve.add_argument(
        "--plan-digest",
        required=True,
        metavar="HEX",
        help="The plan digest you reviewed (shown by show --batch; 8+ characters).",
    )
    _common(approve)
    approve.set_defaults(handler=handle_approve)

    anchor = subparsers.add_parser(
        "anchor", help="Sign the chain head and append it to the anchor log (and stdout)."
    )
    anchor.add_argument("--json", action="store_true", help="The anchor as one JSON object.")
    anchor.set_defaults(handler=handle_anchor)

    privileges = subparsers.add_parser(
        "privileges", help="Print the GRANT/REVOKE statements for the application's role."
    )
    privileges.add_argument("--app-role", required=True, metavar="NAME")
    privileges.set_defaults(handler=handle_privileges)

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
    parser.add_argument(
        "--operator",
        metavar="USERNAME",
        help="The active user taking this step (required unless LEDGER_DEFAULT_OPERATOR is set).",
    )
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
    return 0  # committed; accrual differences are findings, not failure


def handle_approve(options: dict, out: Output) -> int:
    batch = services.approve_batch(
        options["batch"], operator=options.get("operator"), plan_digest=options["plan_digest"]
    )
    if options.get("json"):
        out.json({"batch": str(batch.pk), "state": batch.state, "approved_by": batch.approved_by})
    else:
        out.line(f"Batch {batch.pk} approved by {batch.approved_by}; it can be applied now.")
    return 0


def handle_anchor(options: dict, out: Output) -> int:
    from ledger import anchors

    anchor = anchors.take()
    if options.get("json"):
        out.json(anchor)
    else:
        out.line(anchors.encode(anchor))
        target = anchors.write_target()
        out.progress(
            f"anchored event {anchor.event_id} and entry {anchor.entry_id}"
            + (f"; appended to {target}" if target else "; keep this line outside the database")
        )
    return 0


def handle_privileges(options: dict, out: Output) -> int:
    from ledger import privileges

    for line in privileges.statements(options["app_role"]):
        out.line(line)
    return 0


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
        out.line(f"Plan digest: {report.plan_digest}")
        out.line(
            f"Review, then a second person approves: ./manage.py corrections approve --batch "
            f"{report.batch} --plan-digest {report.plan_digest[:12]} --operator REVIEWER"
        )


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


def describe_conflict(c) -> str:
    """One line: the entity, what differs, expected and found, and who owns it now."""
    what = {
        "status": "status",
        "completed_work": "completed work",
        "visits": "visits held",
        "latest_event": "latest ledger event",
        "missing": "row",
        "busy": "row lock",
    }.get(c.what, c.what)
    found = c.found if c.found is not None else "none"
    text = f"{c.entity_kind} {c.entity_id}: {what} expected {c.expected}, found {found}"
    if c.what == "missing":
        text = f"{c.entity_kind} {c.entity_id}: the row is gone"
    if c.owner_batch:
        text += f" (batch {c.owner_batch} owns its current state)"
    return text


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
        out.line(f"Skipped the units of {len(report.skipped_conflicts)} conflicts:")
        for c in report.skipped_conflicts:
            out.line("  " + describe_conflict(c))
    if report.reverted_state == "partially_undone":
        out.line(
            f"Batch {report.reverts} is partially undone: the skipped units keep its flips; "
            f"undo it again once they are settled."
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
    if report.findings:
        out.line("Findings (the undo committed; look at these):")
        for finding in report.findings:
            out.line(f"  {finding}")
    if report.pending_recomputes:
        out.line(
            f"{report.pending_recomputes} recomputes pending: "
            "run ./manage.py corrections recompute --pending"
        )
