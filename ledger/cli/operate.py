"""Operator subcommands: ``plan``, ``approve``, ``apply``, ``undo``, ``discard``,
``recompute``, ``anchor``, ``privileges``, ``schema``.

Each handler checks every option first (:mod:`ledger.cli.inputs`), then calls one service and
prints its report: a table for people, one JSON object with ``--json``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal

import msgspec

from ledger import services
from ledger.cli import inputs
from ledger.cli.failure import Findings
from ledger.cli.output import Output, clip, printable
from ledger.errors import LedgerError
from ledger.files import read_ids, read_lines
from ledger.planners.visit_list import WORK_STATUS_FOR
from ledger.schema import AccessPlan, ApproveReport, DiscardReport, PlanReport, RunReport

ZERO = Decimal(0)
TARGET_STATUSES = tuple(WORK_STATUS_FOR)


def add_parsers(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="Plan a correction: a priced, reviewable batch (nothing is flipped yet).",
        description="Plan a correction. Each planner stores a batch with its priced plan; "
        "a reviewer approves it, then apply flips the statuses.",
    )
    plans = plan.add_subparsers(dest="planner", required=True, metavar="PLANNER")

    over_cap = plans.add_parser(
        "over-cap",
        help="Completed works past a worker's cap, with their visits, set over_limit.",
        description="Plan the over-cap correction for named opportunities, or scan them all.",
    )
    scope = over_cap.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--opportunity",
        action="append",
        metavar="UUID",
        dest="opportunities",
        help="An opportunity to correct (its opportunity_id UUID); repeat for more.",
    )
    scope.add_argument(
        "--all",
        action="store_true",
        help="Scan every opportunity and report where the rule applies; creates no batch.",
    )
    over_cap.add_argument(
        "--reason",
        metavar="TEXT",
        help="Why the correction is made, kept on every event (required to plan; "
        f"at most {inputs.MAX_REASON} characters).",
    )
    _ticket(over_cap)
    over_cap.add_argument(
        "--exclude",
        metavar="FILE",
        help="Completed work ids to leave alone (PM overrides), one per line; - reads stdin.",
    )
    over_cap.add_argument(
        "--include-paid",
        action="store_true",
        help="Also flip works already paid (excluded by default; their exposure is reported).",
    )
    over_cap.add_argument(
        "--skip-suspended",
        action="store_true",
        help="Leave suspended workers' accesses alone (included and flagged by default).",
    )
    _exact(over_cap)
    _common(over_cap)
    over_cap.set_defaults(handler=handle_plan_over_cap)

    visits = plans.add_parser(
        "visits",
        help="Listed visits (by xform id or visit id) and their completed works.",
        description="Plan a targeted fix of listed visits; a list naming only some visits of "
        "a completed work is refused unless --expand.",
    )
    source = visits.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--xform-ids", metavar="FILE", help="File of xform ids, one per line; - reads stdin."
    )
    source.add_argument(
        "--visit-ids", metavar="FILE", help="File of visit ids, one per line; - reads stdin."
    )
    visits.add_argument(
        "--to",
        default="over_limit",
        dest="to_status",
        choices=TARGET_STATUSES,
        help="The status the listed visits (and their works) take.",
    )
    visits.add_argument(
        "--expand",
        action="store_true",
        help="Include every visit of a listed visit's completed work.",
    )
    visits.add_argument(
        "--reason",
        metavar="TEXT",
        required=True,
        help=f"Why the correction is made (at most {inputs.MAX_REASON} characters).",
    )
    _ticket(visits)
    _exact(visits)
    _common(visits)
    visits.set_defaults(handler=handle_plan_visits)

    undo_plan = plans.add_parser(
        "undo",
        help="The undo of an applied batch, priced: a batch to approve and apply like any.",
        description="Plan the undo of an applied batch: the inverse of each of its events not "
        "undone yet, priced per access (what it gives back). Someone other than the planner "
        "approves it; apply --batch then undoes the batch.",
    )
    _batch(undo_plan, "The applied batch to undo: its UUID, or the first 8 or more characters.")
    undo_plan.add_argument(
        "--reason",
        metavar="TEXT",
        required=True,
        help=f"Why it is undone (at most {inputs.MAX_REASON} characters).",
    )
    _ticket(undo_plan)
    _exact(undo_plan)
    _common(undo_plan)
    undo_plan.set_defaults(handler=handle_plan_undo)

    approve = subparsers.add_parser(
        "approve",
        help="Record that you (not the planner) reviewed a batch's priced plan.",
        description="Approve a planned batch after reviewing its priced plan (show --batch).",
    )
    _batch(approve)
    approve.add_argument(
        "--plan-digest",
        required=True,
        metavar="HEX",
        help="The plan digest you reviewed (show --batch prints it; 8 to 64 hex characters).",
    )
    _common(approve)
    approve.set_defaults(handler=handle_approve)

    apply = subparsers.add_parser(
        "apply",
        help="Apply a planned (and approved) batch: events and flips in one transaction.",
        description="Apply a planned batch, then recompute the accruals of the workers it "
        "touched with the host's own code.",
    )
    _batch(apply)
    _skip_conflicts(apply)
    _wait(apply)
    _common(apply)
    apply.set_defaults(handler=handle_apply)

    undo = subparsers.add_parser(
        "undo",
        help="Revert an applied batch in one step (only where approval is off).",
        description="Undo an applied batch in one step: append and project the inverse of its "
        "events as a new batch. Where approval is required (LEDGER_REQUIRE_APPROVAL) an undo "
        "is planned (plan undo), approved and applied like any batch instead.",
    )
    _batch(undo)
    undo.add_argument(
        "--reason",
        metavar="TEXT",
        required=True,
        help=f"Why it is undone (at most {inputs.MAX_REASON} characters).",
    )
    _skip_conflicts(undo)
    _wait(undo)
    _common(undo)
    undo.set_defaults(handler=handle_undo)

    discard = subparsers.add_parser("discard", help="Drop a planned batch without applying it.")
    _batch(discard)
    _common(discard)
    discard.set_defaults(handler=handle_discard)

    recompute = subparsers.add_parser(
        "recompute",
        help="Finish accrual recomputes left pending by an interruption.",
        description="Recompute the accruals still pending, of one batch or of all; exits 1 "
        "when some remain pending.",
    )
    which = recompute.add_mutually_exclusive_group(required=True)
    which.add_argument("--batch", metavar="ID", help="Only this batch's (UUID or 8+ chars).")
    which.add_argument("--pending", action="store_true", help="Every pending recompute.")
    _json(recompute)
    recompute.set_defaults(handler=handle_recompute)

    anchor = subparsers.add_parser(
        "anchor",
        help="Verify the segment since the previous anchor, sign the chain head, append it to "
        "the anchor log (LEDGER_ANCHOR_LOG) and stdout.",
        description="The anchor witness: verifies the events and lifecycle entries since the "
        "last anchor of LEDGER_ANCHOR_LOG (chain links, recorded_at order, lifecycle and "
        "four-eyes rules, plans), then signs the chain head with LEDGER_ANCHOR_KEY; a "
        "failing segment is not signed (exit 1). Reads only: run it apart from the "
        "application, under the role `privileges --witness-role` describes.",
    )
    _json(anchor)
    anchor.set_defaults(handler=handle_anchor)

    privileges = subparsers.add_parser(
        "privileges",
        help="Print the GRANT/REVOKE statements for the application's role or the anchor "
        "witness's.",
    )
    role = privileges.add_mutually_exclusive_group(required=True)
    role.add_argument(
        "--app-role", metavar="NAME", help="The database role the application connects as."
    )
    role.add_argument(
        "--witness-role",
        metavar="NAME",
        help="The read-only role `corrections anchor` runs under, apart from the application.",
    )
    privileges.set_defaults(handler=handle_privileges)

    schema = subparsers.add_parser(
        "schema",
        help="Print the JSON Schema of every --json output (or of one).",
        description="Print the JSON Schema (draft 2020-12) of the command's --json outputs.",
    )
    from ledger.cli.schemas import OUTPUTS

    schema.add_argument(
        "output",
        nargs="?",
        choices=sorted(OUTPUTS),
        metavar="OUTPUT",
        help="Only this output's schema.",
    )
    schema.set_defaults(handler=handle_schema)


def _batch(
    parser, help: str = "The batch: its UUID, or the first 8 or more characters of it."
) -> None:
    parser.add_argument("--batch", required=True, metavar="ID", help=help)


def _ticket(parser) -> None:
    parser.add_argument(
        "--ticket",
        metavar="REF",
        help=f"The support ticket behind it, e.g. CI-639 (at most {inputs.MAX_TICKET} characters).",
    )


def _skip_conflicts(parser) -> None:
    parser.add_argument(
        "--skip-conflicts",
        action="store_true",
        help="Leave alone the units (a work with its visits) whose status changed since the "
        "plan, recording them in the batch; without it, any conflict refuses the whole batch.",
    )


def _wait(parser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help='When recomputes are queued to Celery workers (LEDGER_RECOMPUTE = "celery"), '
        "wait for them with a progress bar on stderr: exit 0 once all are done, 1 with what "
        "is left pending. The wait gives up when none has finished for LEDGER_RETRY_SECONDS. "
        "Recomputes run in this process are finished before it returns anyway.",
    )


def _json(parser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="Print one JSON object on stdout (docs/json-schema.md)."
    )


def _exact(parser) -> None:
    parser.add_argument(
        "--exact",
        action="store_true",
        help="Price with the host's own recompute, run per worker in a rolled-back "
        "transaction that locks the workers' rows while it runs (default: the host's rules "
        "projected in SQL from a read-only snapshot, no lock, the same figures).",
    )


def _common(parser) -> None:
    parser.add_argument(
        "--operator",
        metavar="USERNAME",
        help="The active user taking this step (default: the LEDGER_DEFAULT_OPERATOR setting; "
        "required when that is unset).",
    )
    _json(parser)
    parser.add_argument(
        "--wide", action="store_true", help="Full ids and untruncated text in tables."
    )


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def handle_plan_over_cap(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    if options["all"]:
        values = ("--reason", "reason"), ("--ticket", "ticket"), ("--exclude", "exclude")
        flags = (
            ("--include-paid", "include_paid"),
            ("--skip-suspended", "skip_suspended"),
            ("--exact", "exact"),
        )
        given = [option for option, key in values if options.get(key) is not None]
        given += [flag for flag, key in flags if options.get(key)]
        if options.get("operator") is not None:
            given.append("--operator")
        if given:
            raise LedgerError(f"--all only reports, it plans nothing: drop {', '.join(given)}")
        out.progress("scanning every opportunity for works past a cap")
        print_scan(services.scan_over_cap(), out)
        return
    reason = inputs.reason(options.get("reason"))
    ticket = inputs.ticket(options.get("ticket"))
    opportunities = [inputs.opportunity_uuid(u) for u in options["opportunities"]]
    exclude = ()
    if options.get("exclude") is not None:
        exclude = read_ids(inputs.path(options["exclude"], "--exclude"), "exclusion")
    out.progress(f"planning the over-cap correction of {len(set(opportunities))} opportunities")
    report = services.plan_over_cap(
        opportunities,
        reason=reason,
        operator=operator,
        exclude_work_ids=exclude,
        include_paid=options["include_paid"],
        skip_suspended=options["skip_suspended"],
        ticket=ticket,
        progress=out.progress,
        exact=options["exact"],
    )
    print_plan(report, out)


def handle_plan_visits(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    reason = inputs.reason(options.get("reason"))
    ticket = inputs.ticket(options.get("ticket"))
    xform_ids = visit_ids = None
    if options.get("xform_ids") is not None:
        xform_ids = read_lines(inputs.path(options["xform_ids"], "--xform-ids"), "xform id")
        for n, value in enumerate(xform_ids, start=1):
            if len(value) > inputs.MAX_XFORM_ID:
                raise LedgerError(
                    f"xform id file {options['xform_ids']}, entry {n}: longer than "
                    f"{inputs.MAX_XFORM_ID} characters, not an xform id"
                )
        count = len(xform_ids)
    else:
        visit_ids = read_ids(inputs.path(options["visit_ids"], "--visit-ids"), "visit id")
        count = len(visit_ids)
    if not count:
        raise LedgerError("the id file lists no ids")
    out.progress(f"planning {count} listed visits → {options['to_status']}")
    report = services.plan_visits(
        reason=reason,
        xform_ids=xform_ids,
        visit_ids=visit_ids,
        to_status=options["to_status"],
        expand=options["expand"],
        operator=operator,
        ticket=ticket,
        progress=out.progress,
        exact=options["exact"],
    )
    print_plan(report, out)


def handle_plan_undo(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    reason = inputs.reason(options.get("reason"))
    ticket = inputs.ticket(options.get("ticket"))
    batch = inputs.batch_id(options["batch"])
    out.progress(f"planning the undo of batch {batch}")
    report = services.plan_undo(
        batch, reason=reason, operator=operator, ticket=ticket, progress=out.progress,
        exact=options["exact"],
    )  # fmt: skip
    print_plan(report, out)


def _committed(report: RunReport, waited: bool) -> None:
    """After a committed apply or undo: recomputes left pending, and a head the witness
    refused to anchor, are findings (exit 1) — but not recomputes queued to the workers,
    unless the command waited for them (``--wait``)."""
    verb = "undo" if report.action == "undo" else "apply"
    left = report.pending_recomputes
    if not waited:
        left -= report.queued_recomputes
    if left > 0:
        raise Findings(
            f"{left} recomputes pending: the {verb} of batch "
            f"{report.reverts or report.batch} committed; finish them with "
            "./manage.py corrections recompute --pending"
        )
    if report.anchor_problem:
        raise Findings(f"the {verb} of batch {report.reverts or report.batch} committed; the "
                       f"chain head was not anchored: {report.anchor_problem}")  # fmt: skip


def _finish(report: RunReport, options: dict, out: Output) -> None:
    """Wait for queued recomputes when asked, print the report, and exit as it says."""
    waited = bool(options.get("wait")) and report.recompute == "queued"
    if waited:
        from ledger.cli.waiting import RecomputeBar

        out.note(
            f"waiting for {report.queued_recomputes} queued recomputes of batch "
            f"{out.short(report.batch)}"
        )
        out.progress.clear()
        bar = RecomputeBar(out)
        try:
            report = services.wait_for_recomputes(report, progress=bar)
        finally:
            bar.close()
    print_run(report, out)
    _committed(report, waited)


def handle_apply(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    batch = inputs.batch_id(options["batch"])
    out.progress(f"applying batch {batch}")
    report = services.apply_batch(
        batch,
        operator=operator,
        skip_conflicts=options["skip_conflicts"],
        progress=out.progress,
    )
    _finish(report, options, out)


def handle_undo(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    reason = inputs.reason(options.get("reason"))
    batch = inputs.batch_id(options["batch"])
    out.progress(f"undoing batch {batch}")
    report = services.undo_batch(
        batch,
        reason=reason,
        operator=operator,
        skip_conflicts=options["skip_conflicts"],
        progress=out.progress,
    )
    _finish(report, options, out)  # committed; accrual differences are findings, not failure


def handle_approve(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    digest = inputs.hex_digest(options["plan_digest"], "--plan-digest")
    batch = services.approve_batch(
        inputs.batch_id(options["batch"]), operator=operator, plan_digest=digest
    )
    if out.json_mode:
        out.json(
            ApproveReport(batch=str(batch.pk), state=batch.state, approved_by=batch.approved_by)
        )
    else:
        out.line(f"Batch {batch.pk} approved by {batch.approved_by}; it can be applied now.")


def handle_discard(options: dict, out: Output) -> None:
    operator = inputs.operator(options.get("operator"))
    batch = services.discard_batch(inputs.batch_id(options["batch"]), operator=operator)
    if out.json_mode:
        out.json(DiscardReport(batch=str(batch.pk), state=batch.state))
    else:
        out.line(f"Batch {batch.pk} discarded.")


def handle_recompute(options: dict, out: Output) -> None:
    batch = None if options["pending"] else inputs.batch_id(options["batch"])
    out.progress("recomputing accruals")
    report = services.recompute_report(batch, progress=out.progress)
    if out.json_mode:
        out.json(report)
    else:
        out.line(
            f"Recomputed {report.recomputed} accesses; {report.pending_recomputes} still pending."
        )
        _print_pending(report, out)
    if report.pending_recomputes:
        raise Findings(
            f"recompute: {report.pending_recomputes} recomputes still pending "
            "(run it again: corrections recompute --pending)"
        )


def handle_anchor(options: dict, out: Output) -> None:
    from ledger import anchors

    anchor = anchors.take()
    if out.json_mode:
        out.json(anchor)
        return
    out.line(anchors.encode(anchor))
    target = anchors.write_target()
    out.note(
        f"anchored event {anchor.event_id} and entry {anchor.entry_id}"
        + (f"; appended to {target}" if target else "; keep this line outside the database")
    )


def handle_privileges(options: dict, out: Output) -> None:
    from ledger import privileges

    option = "--app-role" if options.get("app_role") is not None else "--witness-role"
    role = options["app_role"] if option == "--app-role" else options["witness_role"]
    if len(role) > 63:
        raise LedgerError(f"{option}: {inputs.shown(role)} is longer than 63 characters")
    make = privileges.statements if option == "--app-role" else privileges.witness_statements
    for line in make(role):
        out.line(line)


def handle_schema(options: dict, out: Output) -> None:
    from ledger.cli.schemas import document, output_schema

    out.json(output_schema(options["output"]) if options.get("output") else document())


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def _signed(value) -> str:
    return f"{value:+}" if value else "0"


def money_by_opportunity(accesses: Sequence[AccessPlan]) -> list[tuple]:
    """Per (opportunity, currency): works, visits, and the money columns finance reviews."""
    groups: dict[tuple[str, str], list] = defaultdict(
        lambda: [0, 0, 0, ZERO, 0, ZERO, ZERO, ZERO, 0]
    )
    for a in accesses:
        g = groups[(a.opportunity, a.currency)]
        g[0] += a.works
        g[1] += a.visits
        g[2] += a.worker_accrual_change
        g[3] += a.worker_accrual_change_usd
        g[4] += a.org_accrual_change
        g[5] += a.org_accrual_change_usd
        g[6] += a.paid_to_date
        g[7] += a.overpayment_exposure
        g[8] += 1
    return [(opp, cur, *values) for (opp, cur), values in sorted(groups.items())]


def print_money(accesses: Sequence[AccessPlan], totals, out: Output) -> None:
    """The priced plan per opportunity and currency, then the totals per currency."""
    rows = money_by_opportunity(accesses)
    if rows:
        out.line("By opportunity (local currency; USD at the host's rate of each work's date):")
        out.table(
            ["opportunity", "cur", "works", "visits", "worker Δ", "worker Δ USD", "org Δ",
             "org Δ USD", "paid", "exposure"],
            [
                (out.short(opp), cur, works, visits, _signed(w), _signed(w_usd), _signed(o),
                 _signed(o_usd), paid, exposure)
                for opp, cur, works, visits, w, w_usd, o, o_usd, paid, exposure, _ in rows
            ],
        )  # fmt: skip
    if totals is not None and totals.by_currency:
        out.line("")
        out.line("Totals by currency:")
        out.table(
            ["cur", "accesses", "works", "visits", "worker Δ", "org Δ", "paid to date",
             "exposure"],
            [
                (c.currency, c.accesses, c.works, c.visits, _signed(c.worker_accrual_change),
                 _signed(c.org_accrual_change), c.paid_to_date, c.overpayment_exposure)
                for c in totals.by_currency
            ],
        )  # fmt: skip
        out.line(
            f"All currencies in USD: worker accrual {_signed(totals.worker_accrual_change_usd)}, "
            f"org accrual {_signed(totals.org_accrual_change_usd)}"
        )


def _wrap(out: Output, text: str, indent: str = "") -> None:
    import textwrap

    width = out.width if not out.wide else 10_000
    for line in textwrap.wrap(printable(text), width=width, initial_indent=indent,
                              subsequent_indent=indent or "  "):  # fmt: skip
        out.line(line)


def print_plan(report: PlanReport, out: Output) -> None:
    if out.json_mode:
        out.json(report)
        return
    if report.batch is None:
        out.line("Nothing to correct: no entity in scope needs a flip.")
    else:
        out.line(f"Planned batch {report.batch} ({report.planner})")
    _wrap(out, f"Reason: {report.reason}")
    if report.accesses:
        out.line("")
        out.table(
            ["access", "worker", "cur", "susp", "works", "visits", *(
                ["accrual now", "projected"] if out.wide else []), "worker Δ",
             *(["worker Δ USD"] if out.wide else []), "org Δ",
             *(["org Δ USD"] if out.wide else []), "paid", "exposure"],
            [
                (a.access_id, a.worker, a.currency, "yes" if a.suspended else "", a.works,
                 a.visits, *([a.accrual_now, a.projected_accrual] if out.wide else []),
                 _signed(a.worker_accrual_change),
                 *([_signed(a.worker_accrual_change_usd)] if out.wide else []),
                 _signed(a.org_accrual_change),
                 *([_signed(a.org_accrual_change_usd)] if out.wide else []),
                 a.paid_to_date, a.overpayment_exposure or "")
                for a in report.accesses
            ],
            shrink=["worker"],
        )  # fmt: skip
    if report.exclusions:
        out.line("")
        out.line("Excluded (not flipped):")
        for e in report.exclusions:
            ids = ", ".join(map(str, e.completed_work_ids[:10]))
            more = " …" if len(e.completed_work_ids) > 10 else ""
            _wrap(out, f"  {e.reason}: {e.works} works, {e.visits} visits (works {ids}{more})")
    t = report.totals
    out.line("")
    out.line(
        f"Totals: {t.works} works and {t.visits} visits across {t.accesses} accesses "
        f"({t.suspended_accesses} suspended); {t.excluded_works} works excluded."
    )
    if report.accesses:
        out.line("")
        print_money(report.accesses, t, out)
        if report.pricing == "exact":
            out.line("Priced by the host's own recompute, run in a rolled-back transaction.")
    if report.duplicate_entries:
        shown = ", ".join(report.duplicate_entries[:10])
        more = " …" if len(report.duplicate_entries) > 10 else ""
        _wrap(out, f"Listed more than once (planned once): {shown}{more}")
    for note in report.notes:
        _wrap(out, f"Note: {note}")
    if report.batch:
        out.line("")
        out.line(f"Plan digest: {report.plan_digest}")
        out.line("Review it, then someone other than the planner approves it:")
        out.line(
            f"  ./manage.py corrections approve --batch {report.batch[:8]} "
            f"--plan-digest {report.plan_digest[:12]} --operator REVIEWER"
        )


def print_scan(report, out: Output) -> None:
    if out.json_mode:
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
        shrink=["name"],
    )  # fmt: skip


def describe_conflict(c, short=str) -> str:
    """One line: the entity, what differs, expected and found, and who owns it now."""
    what = {
        "status": "status",
        "completed_work": "completed work",
        "visits": "visits held",
        "latest_event": "latest ledger event",
        "missing": "row",
        "busy": "row lock",
        "payment_date": "paid",
        "invoice": "invoiced",
        "suspended": "access suspended",
        "paid_to_date": "paid to the worker to date",
        "cap": "rank",
    }.get(c.what, c.what)
    found = c.found if c.found is not None else "none"
    text = f"{c.entity_kind} {c.entity_id}: {what} expected {c.expected}, found {found}"
    if c.what == "missing":
        text = f"{c.entity_kind} {c.entity_id}: the row is gone"
    if c.owner_batch:
        text += f" (batch {short(c.owner_batch)} owns its current state)"
    return text


def print_run(report: RunReport, out: Output) -> None:
    if out.json_mode:
        out.json(report)
        return
    verb = "Undid" if report.action == "undo" else "Applied"
    target = (
        f"batch {report.reverts} with undo batch {report.batch}"
        if report.reverts
        else f"batch {report.batch}"
    )
    _wrap(
        out,
        f"{verb} {target}: {report.events} events "
        f"({report.works} completed works, {report.visits} visits).",
    )
    if report.skipped_conflicts:
        out.line(f"Skipped the units of {len(report.skipped_conflicts)} conflicts:")
        for c in report.skipped_conflicts:
            out.line(clip("  " + describe_conflict(c, out.short), out.width))
    if report.reverted_state == "partially_undone":
        _wrap(
            out,
            f"Batch {report.reverts} is partially undone: the skipped units keep its flips; "
            "undo it again once they are settled.",
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
        out.line(f"Findings (the {report.action} committed; look at these):")
        for finding in report.findings:
            _wrap(out, finding, "  ")
    if report.anchor:
        out.note("anchored the chain head after the projection (LEDGER_ANCHOR_LOG)")
    elif report.anchor_problem:
        _wrap(out, f"Not anchored: {report.anchor_problem}")
    if report.queued_recomputes and report.pending_recomputes:
        _wrap(
            out,
            f"Recomputes: {report.queued_recomputes} of {report.pending_recomputes} pending are "
            f"queued to the Celery workers; follow them with corrections show --batch "
            f"{out.short(report.batch)}, or wait for them with --wait.",
        )
    _print_pending(report, out)


def _print_pending(report: RunReport, out: Output) -> None:
    if not report.pending:
        return
    out.line(f"Still pending ({len(report.pending)}), by access:")
    out.table(
        ["access", "batch", "why"],
        [(p.access_id, out.short(p.batch), p.reason) for p in report.pending],
        shrink=["why"],
    )


def plan_from_summary(summary: dict) -> PlanReport | None:
    """The priced plan a batch stored when it was planned, if it has one."""
    plan = summary.get("plan") if isinstance(summary, dict) else None
    if not isinstance(plan, dict):
        return None
    try:
        return msgspec.convert(plan, PlanReport)
    except msgspec.ValidationError:
        return None
