"""The command behaves as a Django command: CommandError with exit codes, flags after the
subcommand, help everywhere, progress on stderr, tables within 100 columns, stdin, pipes."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from ledger.cli import output
from ledger.cli.failure import CorrectionsError
from ledger.management.commands.corrections import Command

from .conftest import ROOT, fingerprint, run_limited

WIDTH = 100


def _manage(*args, stdout=subprocess.PIPE, timeout=120, **kwargs):
    env = {**os.environ, "DATABASE_NAME": connection.settings_dict["NAME"]}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "corrections", *args],
        cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, **kwargs,
    )  # fmt: skip


# -- failures are CommandErrors -----------------------------------------------------------------


def test_call_command_raises_a_command_error_with_the_code_of_its_kind(world):
    try:
        call_command("corrections", "apply", "--batch", world.applied, stdout=io.StringIO())
    except Exception as error:  # what a Celery task catches
        assert isinstance(error, CommandError) and isinstance(error, CorrectionsError)
        assert (error.returncode, error.kind) == (4, "wrong_state")
        assert "only a planned batch can be applied" in str(error)
        assert error.error is not None and error.__cause__ is error.error
    else:
        pytest.fail("no CommandError")
    with pytest.raises(CommandError) as usage:
        call_command("corrections", "apply")
    assert usage.value.returncode == 2


def test_shell_exit_codes_and_traceback(db):
    missing = "6f1c1f8e-0000-4000-8000-000000000000"
    plain = _manage("show", "--batch", missing)
    assert plain.returncode == 3 and plain.stdout == ""
    assert plain.stderr.splitlines() == [f"corrections: no batch {missing}"]
    usage = _manage("show")
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1
    traced = _manage("show", "--batch", missing, "--traceback")
    assert traced.returncode == 1 and "Traceback" in traced.stderr  # Python's, uncaught
    assert "NotFound" in traced.stderr and "CorrectionsError" in traced.stderr


# -- flags after the subcommand -----------------------------------------------------------------


def test_flags_after_the_subcommand(world, monkeypatch):
    monkeypatch.setattr(output, "PROGRESS_DELAY", 0.0)
    loud = run_limited("recompute", "--pending")
    quiet = run_limited("recompute", "--pending", "-v", "0")
    also_quiet = run_limited("-v", "0", "recompute", "--pending")
    assert loud.code == quiet.code == also_quiet.code == 0
    assert "recomputing accruals" in loud.err
    assert quiet.err == also_quiet.err == ""
    assert run_limited("batches", "--no-color", "--verbosity", "2").code == 0


def test_progress_while_planning_and_pricing(world, monkeypatch):
    monkeypatch.setattr(output, "PROGRESS_DELAY", 0.0)
    result = run_limited("plan", "over-cap", "--opportunity", world.opp_b, "--reason", "r")
    assert result.code == 0, result.err
    assert "planning the over-cap correction of 1 opportunities" in result.err
    assert "pricing" in result.err and "done in" in result.err
    quiet = run_limited("plan", "over-cap", "--opportunity", world.opp_b, "--reason", "r", "-v0")
    assert quiet.code == 0 and quiet.err == ""


def test_progress_waits_then_repeats_then_ends():
    now = [0.0]
    lines = []
    progress = output.Progress(lines.append, enabled=True, delay=2, every=5, clock=lambda: now[0])
    progress._thread = object()  # no ticker thread: the test ticks
    progress("pricing")
    now[0] = 1.0
    progress.tick()
    assert lines == []
    now[0] = 2.5
    progress.tick()
    now[0] = 4.0
    progress.tick()
    now[0] = 8.0
    progress.tick()
    progress._thread = None
    progress.close()
    assert lines == ["pricing (2 s)", "  … still pricing (8 s)", "done in 8.0 s"]


# -- help -----------------------------------------------------------------------------------------


def _parsers():
    parser = Command().create_parser("manage.py", "corrections")

    def walk(p):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield p
        for action in subs:
            for child in dict.fromkeys(action.choices.values()):
                yield from walk(child)

    return parser, list(walk(parser))


def test_help_on_every_subcommand_and_option():
    parser, leaves = _parsers()
    assert len(leaves) >= 16
    for sub in leaves:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{sub.prog}: {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        for action in sub._actions:
            if action.required and action.option_strings:
                line = next(x for x in text.splitlines() if action.option_strings[-1] in x)
                assert action.option_strings[-1] in text and "required" in text, sub.prog
                del line
    visits = next(p for p in leaves if p.prog.endswith("plan visits"))
    help_text = " ".join(visits.format_help().split())
    assert "{over_limit,approved,rejected,pending}" in help_text
    assert "default: over_limit" in help_text
    assert "(required)" in help_text  # --reason
    batches = next(p for p in leaves if p.prog.endswith(" batches"))
    assert "default: 200" in " ".join(batches.format_help().split())


# -- tables ---------------------------------------------------------------------------------------


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def test_tables_fit_100_columns_unless_wide(world, tmp_path):
    long_reason = "An over-cap incident reason that goes on and on " * 10
    plan = run_limited("plan", "over-cap", "--opportunity", world.opp_b, "--reason",
                       long_reason[:1900], "--ticket", "T-" + "9" * 150)  # fmt: skip
    assert plan.code == 0, plan.err
    outputs = [plan.out]
    for args in (
        ("batches",),
        ("show", "--batch", world.undone),
        ("show", "--batch", world.planned),
        ("history", "--batch", world.undone),
        ("history", "--batch", world.undone, "--as-of", "2030-01-01"),
        ("verify",),
    ):
        result = run_limited(*args)
        # verify finds the drift the world made on purpose: its tables still print
        assert result.code == (1 if args == ("verify",) else 0), (args, result.err)
        outputs.append(result.out)
    for text in outputs:
        assert _widest(text) <= WIDTH, text
    wide = run_limited("batches", "--wide")
    assert _widest(wide.out) > WIDTH and world.undone in wide.out


def test_show_prints_the_priced_plan_per_opportunity_and_currency(world):
    shown = run_limited("show", "--batch", world.planned[:8])
    assert shown.code == 0, shown.err
    text = shown.out
    assert "Priced plan:" in text and "By opportunity" in text
    header = next(line for line in text.splitlines() if line.startswith("opportunity"))
    for column in ("cur", "worker Δ", "worker Δ USD", "org Δ", "org Δ USD", "paid", "exposure"):
        assert column in header
    assert world.opp_b[:8] in text
    assert "Totals by currency:" in text and "All currencies in USD" in text


def test_a_batch_prefix_is_accepted_where_a_batch_is(world):
    assert run_limited("show", "--batch", world.applied[:8], "--json").json["batch"]["id"] == (
        world.applied
    )
    assert run_limited("history", "--batch", world.applied[:13]).code == 0


# -- files from stdin -----------------------------------------------------------------------------


def test_ids_from_stdin(world):
    before = fingerprint()
    result = run_limited(
        "plan", "visits", "--visit-ids", "-", "--expand", "--reason", "from stdin", "--json",
        stdin=f"# one visit\n{world.visit}\n".encode(),
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json["scope"]["visit_ids"] == 1
    assert result.json["totals"]["works"] == 1 and result.json["batch"]
    assert fingerprint() != before  # planned: a batch was written


# -- pipes and special files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("schema",), ("verify",), ("batches", "--wide"), ("verify", "--json")]
)
def test_a_reader_that_stops_early_is_no_error(db, args):
    env = {**os.environ, "DATABASE_NAME": connection.settings_dict["NAME"]}
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "corrections", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    child.stdout.close()  # as `| head` does once it has read enough
    try:
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    err = err.decode()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert child.returncode == 0, err


def test_a_fifo_is_refused_without_waiting(db, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (("check-export", str(fifo)),
                 ("plan", "visits", "--visit-ids", str(fifo), "--reason", "r")):  # fmt: skip
        done = _manage(*args, timeout=60)
        assert done.returncode == 3, done.stderr
        assert done.stderr.splitlines() == [
            f"corrections: {'export' if args[0] == 'check-export' else 'visit id'} file "
            f"{fifo} is not a regular file"
        ]


# -- pricing: the projection by default, the host's own code with --exact ---------------------


def _money(plan: dict) -> list[tuple]:
    return [
        (a["access_id"], a["accrual_now"], a["projected_accrual"], a["worker_accrual_change"],
         a["worker_accrual_change_usd"], a["org_accrual_change"], a["org_accrual_change_usd"])
        for a in plan["accesses"]
    ]  # fmt: skip


def test_plan_exact_prices_with_the_hosts_code_and_agrees(world):
    args = ("plan", "over-cap", "--opportunity", world.opp_b, "--reason", "r", "--json")
    projected = run_limited(*args)
    exact = run_limited(*args, "--exact")
    assert projected.code == exact.code == 0, projected.err + exact.err
    assert projected.json["pricing"] == "projection" and exact.json["pricing"] == "exact"
    assert _money(projected.json) and _money(projected.json) == _money(exact.json)
    table = run_limited(*args[:-1], "--exact")
    assert "Priced by the host's own recompute" in table.out


def test_exact_is_refused_with_all():
    result = run_limited("plan", "over-cap", "--all", "--exact")
    assert result.code == 3
    assert "drop --exact" in result.err
