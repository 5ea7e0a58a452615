"""The incident demo as a sequence of steps, each printing what it did.

Kept as plain functions on one ``stdout`` so later steps (the ledger's plan, apply and
verification) can be appended to :func:`run` without touching the command. The demo runs on a
database of its own (``make demo`` names it ``ledger_demo``), created and migrated when
missing, and can be run again on it: each run seeds a new incident next to the earlier ones.
Every line it prints fits :data:`WIDTH` columns; it ends with where to look in the admin.
"""

from __future__ import annotations

from typing import TextIO

from commcare_connect.demo.incident import IncidentData, build_incident
from commcare_connect.demo.situation import over_cap_situation, over_cap_totals, print_situation

WIDTH = 100


def _heading(stdout: TextIO, title: str) -> None:
    stdout.write(f"\n== {title} ==\n")


def seed(stdout: TextIO) -> IncidentData:
    _heading(stdout, "1. Seed the incident through the form processor (duplicate-flag bug on)")
    return build_incident(stdout)


def show_over_cap(data: IncidentData, stdout: TextIO) -> dict[int, dict[str, int]]:
    """Print the per-access table and per-opportunity totals; return the totals by opportunity."""
    _heading(stdout, "2. Works past each worker's cap (date_created, id order)")
    rows = over_cap_situation(data.opportunity_ids)
    print_situation(rows, stdout)
    totals: dict[int, dict[str, int]] = {}
    for opp in (data.opportunity_a, data.opportunity_b):
        opp_totals = over_cap_totals(r for r in rows if r.opportunity_id == opp.pk)
        totals[opp.pk] = opp_totals
        stdout.write(
            f"{opp.name}: {opp_totals.get('works', 0)} works over the cap across "
            f"{opp_totals.get('accesses', 0)} accesses; accrued "
            f"{opp_totals.get('accrued', 0)} {opp.currency_code}, org "
            f"{opp_totals.get('org_accrued', 0)} {opp.currency_code}\n"
        )
    return totals


def prepare_database(stdout: TextIO) -> str:
    """Create the configured database when it is missing, and migrate it; return its name."""
    from django.core.management import call_command
    from django.db import connection

    name = connection.settings_dict["NAME"]
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")
            stdout.write(f"Created the demo's database {name}.\n")
    call_command("migrate", verbosity=0)
    return name


def run(stdout: TextIO) -> IncidentData:
    database = prepare_database(stdout)
    data = seed(stdout)
    show_over_cap(data, stdout)
    correct(data, stdout)
    look_in_the_admin(database, stdout)
    return data


def look_in_the_admin(database: str, stdout: TextIO) -> None:
    """Where a person sees it all: the read-only admin, as a superuser or as the auditor."""
    import shlex

    from commcare_connect.demo.people import ADMIN, AUDITOR, GROUPS, admin_logins

    logins = admin_logins()
    group = next(
        name for name, perms in GROUPS.items() if all(p.startswith("view_") for p in perms)
    )
    _heading(stdout, "12. Look for yourself: the ledger in the admin (read-only)")
    stdout.write(
        f"  DATABASE_NAME={shlex.quote(database)} ./manage.py runserver\n"
        "  then open http://127.0.0.1:8000/admin/ledger/ and sign in as\n"
        f"    {ADMIN:<8} password {logins[ADMIN]}  (superuser)\n"
        f"    {AUDITOR:<8} password {logins[AUDITOR]}  (staff in {group!r}: view only)\n"
        "  These passwords were made for this run; run the demo again for new ones.\n"
    )


def _shell(args: tuple[str, ...], prompt: str = "$ ./manage.py corrections ") -> str:
    """The command as one would type it, continued with backslashes to fit the width."""
    import shlex

    words: list[str] = []
    for arg in args:  # an option stays on the line of its value
        if (
            words
            and words[-1].startswith("--")
            and " " not in words[-1]
            and not arg.startswith("--")
        ):
            words[-1] += " " + shlex.quote(arg)
        else:
            words.append(shlex.quote(arg))
    lines, line = [], prompt.rstrip()
    for word in words:
        if len(line) + 1 + len(word) > WIDTH - 2 and line.strip() not in ("", "$"):
            lines.append(line + " \\")
            line = "    " + word
        else:
            line += " " + word
    return "\n".join([*lines, line]) + "\n"


def _corrections(stdout: TextIO, *args: str, clip: bool = False) -> str:
    """Run one ``corrections`` subcommand as an operator would, echoing it and its output
    (with ``clip``, each line cut to the width)."""
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    stdout.write("\n" + _shell(args))
    out = io.StringIO()
    try:
        call_command("corrections", *args, stdout=out, stderr=out)
    except CommandError as error:
        stdout.write(out.getvalue())
        raise RuntimeError(f"corrections {args[0]} failed ({error.returncode}): {error}") from None
    text = out.getvalue()
    if clip:
        text = "".join(
            (line[: WIDTH - 1] + "…" if len(line) > WIDTH else line) + "\n"
            for line in text.splitlines()
        )
    stdout.write(text)
    return out.getvalue()


def _accruals(data: IncidentData) -> dict[int, int]:
    from commcare_connect.opportunity.models import OpportunityAccess

    ids = [a.pk for a in data.accesses.values()]
    return dict(OpportunityAccess.objects.filter(pk__in=ids).values_list("pk", "payment_accrued"))


def correct(data: IncidentData, stdout: TextIO) -> None:
    """Plan → approve → apply → history → verify → plan undo → approve → apply → verify, as
    operators run them."""
    import re

    from django.conf import settings

    from commcare_connect.demo.people import OPERATOR, REVIEWER, ensure_people
    from commcare_connect.opportunity.models import UserVisit

    opportunities = [str(u) for u in data.opportunity_uuids]
    scope = [x for u in opportunities for x in ("--opportunity", u)]
    before = _accruals(data)
    ensure_people()
    anchors = settings.LEDGER_ANCHOR_KEY and settings.LEDGER_ANCHOR_LOG
    checked = ("--anchors", settings.LEDGER_ANCHOR_LOG) if anchors else ()

    _heading(stdout, f"3. {OPERATOR} plans the correction: what flips, what it costs")
    plan = _corrections(
        stdout, "plan", "over-cap", *scope, "--reason",
        "Over-cap incident: visits past a worker's cap were auto-approved", "--ticket", "CI-639",
        "--operator", OPERATOR,
    )  # fmt: skip
    batch = re.search(r"Planned batch ([0-9a-f-]{36})", plan).group(1)
    digest = re.search(r"Plan digest: ([0-9a-f]{64})", plan).group(1)

    _heading(stdout, f"4. {REVIEWER} (finance) reviews the priced plan and approves it")
    _corrections(stdout, "show", "--batch", batch[:8])
    _corrections(
        stdout,
        "approve",
        "--batch",
        batch[:8],
        "--plan-digest",
        digest[:12],
        "--operator",
        REVIEWER,
    )

    _heading(stdout, f"5. {OPERATOR} applies it: events and flips in one transaction, recompute")
    # With a broker configured the recomputes are queued to the workers (make worker): wait.
    wait = ("--wait",) if settings.LEDGER_RECOMPUTE == "celery" else ()
    _corrections(stdout, "apply", "--batch", batch[:8], "--operator", OPERATOR, *wait)
    after_apply = _accruals(data)

    _heading(stdout, "6. History of one corrected visit")
    visit = (
        UserVisit.objects.filter(completed_work_id=data.over_cap_work_ids["w1"])
        .exclude(status="trial")
        .order_by("id")
        .first()
    )
    _corrections(stdout, "history", "--visit", str(visit.pk))

    _heading(stdout, "7. Verify the ledger against the live data and the external anchors")
    if not anchors:
        _corrections(stdout, "anchor", clip=True)  # one long signed line
    _corrections(stdout, "verify", *checked)

    _heading(stdout, "8. Undo the batch (a rehearsal of the way back): planned and priced")
    undo_plan = _corrections(
        stdout, "plan", "undo", "--batch", batch[:8], "--reason", "Demo: rehearse the rollback",
        "--operator", OPERATOR,
    )  # fmt: skip
    undo = re.search(r"Planned batch ([0-9a-f-]{36})", undo_plan).group(1)
    undo_digest = re.search(r"Plan digest: ([0-9a-f]{64})", undo_plan).group(1)

    _heading(stdout, f"9. {REVIEWER} (finance) approves the undo: it gives the pay back")
    _corrections(
        stdout, "approve", "--batch", undo[:8], "--plan-digest", undo_digest[:12],
        "--operator", REVIEWER,
    )  # fmt: skip

    _heading(stdout, f"10. {OPERATOR} applies the undo")
    _corrections(stdout, "apply", "--batch", undo[:8], "--operator", OPERATOR, *wait)
    _corrections(stdout, "history", "--visit", str(visit.pk))
    _corrections(stdout, "verify", *checked)

    _heading(stdout, "11. Accruals: before, after apply, after undo")
    after_undo = _accruals(data)
    stdout.write(f"{'worker':<8}{'access':>8}{'before':>10}{'applied':>10}{'undone':>10}\n")
    for key, access in sorted(data.accesses.items()):
        pk = access.pk
        stdout.write(f"{key:<8}{pk:>8}{before[pk]:>10}{after_apply[pk]:>10}{after_undo[pk]:>10}\n")
    restored = after_undo == before
    stdout.write(
        "Every accrual is back where it was.\n" if restored else "ACCRUALS DIFFER AFTER UNDO\n"
    )
    if not restored:
        raise RuntimeError("undo did not restore the accruals")
