"""Promises of the documentation that each get a test of their own: the plan digest checked
again at apply, anchors taken by apply and undo, exit 6 with its JSON error when live traffic
outlasts the retry window, and the system checks on ``LEDGER_ACCESS_LOCK``."""

from __future__ import annotations

import json

import pgtrigger
import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection

from commcare_connect.opportunity.models import CompletedWork
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import anchors
from ledger.models import CorrectionBatch, CorrectionEvent, PlannedChange
from ledger.planners.rows import table

from .conftest import ledger_counts


def _capped(host, works: int = 3):
    opp = host.opportunity()
    unit = host.unit(opp, amount=100, required=1)
    access = host.access(opp, caps={unit: 1})
    for _ in range(works):
        host.approved_work(access, unit)
    update_payment_accrued_for_user(access, incremental=False)
    return opp, access


def _plan(run, opp, *extra) -> dict:
    result = run(
        "plan", "over-cap", "--opportunity", str(opp.opportunity_id), "--reason", "r", "--json",
        *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    return result.json


def _statuses(access) -> dict[int, str]:
    return dict(CompletedWork.objects.filter(opportunity_access=access).values_list("pk", "status"))


# -- the plan digest, checked again at apply -----------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        # A planned flip now says something else than the plan that was reviewed…
        "UPDATE {table} SET to_status = 'rejected' WHERE batch_id = %s AND excluded = ''",
        # …or a work the plan left alone (already paid) is slipped in.
        "UPDATE {table} SET excluded = '' WHERE batch_id = %s AND excluded <> ''",
    ],
    ids=["to-status-changed", "exclusion-lifted"],
)
def test_apply_refuses_planned_changes_edited_after_the_review(host, run, settings, edit):
    settings.LEDGER_REQUIRE_APPROVAL = True
    opp, access = _capped(host, works=4)
    paid = CompletedWork.objects.filter(opportunity_access=access).order_by("-id").first()
    CompletedWork.objects.filter(pk=paid.pk).update(payment_date="2026-01-01T00:00:00Z")
    plan = _plan(run, opp, "--operator", "alice")
    approved = run(
        "approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
        "--operator", "bob",
    )  # fmt: skip
    assert approved.code == 0, approved.err
    # The planned changes of a planned batch are open to a plain UPDATE (they are frozen only
    # once the batch leaves planned): an edit between review and apply.
    with connection.cursor() as cursor:
        cursor.execute(edit.format(table=table(PlannedChange)), [plan["batch"]])
        assert cursor.rowcount >= 1
    statuses = _statuses(access)
    counts = ledger_counts()

    refused = run("apply", "--batch", plan["batch"], "--operator", "alice", "--json")
    assert refused.code == 4, refused.err
    assert "its planned changes no longer match its plan digest" in refused.err
    assert refused.json["error"] == "wrong_state" and refused.json["exit_code"] == 4
    assert ledger_counts() == counts
    assert _statuses(access) == statuses
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "planned"


def test_the_table_owner_lifting_the_freeze_is_caught_at_apply_too(host, run, settings):
    """Even the owner, lifting the freeze guard, cannot make apply run an edited plan."""
    opp, access = _capped(host)
    plan = _plan(run, opp)
    guard = "ledger.PlannedChange:ledger_planned_change_frozen"
    with pgtrigger.ignore(guard), connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table(PlannedChange)} WHERE batch_id = %s AND entity_kind = 'visit'",
            [plan["batch"]],
        )
        assert cursor.rowcount >= 1
    refused = run("apply", "--batch", plan["batch"])
    assert refused.code == 4
    assert "no longer match its plan digest" in refused.err
    assert not CorrectionEvent.objects.filter(batch_id=plan["batch"]).exists()


# -- anchors taken by apply and undo -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_apply_and_undo_anchor_the_chain_head_and_verify_holds_the_chain_to_them(
    host, run, settings, tmp_path
):
    log = tmp_path / "anchors.jsonl"
    settings.LEDGER_ANCHOR_KEY = "k" * 64
    settings.LEDGER_ANCHOR_LOG = str(log)
    opp, _ = _capped(host)
    plan = _plan(run, opp)
    assert not log.exists()  # planning records no events: nothing to anchor

    applied = run("apply", "--batch", plan["batch"], "--json")
    assert applied.code == 0, applied.err
    (line,) = log.read_text().splitlines()
    assert json.loads(applied.json["anchor"]) == json.loads(line)
    last = CorrectionEvent.objects.order_by("-id").first()
    anchor = json.loads(line)
    assert (anchor["event_id"], anchor["event_hash"]) == (last.pk, last.hash)
    assert anchor["events"] == CorrectionEvent.objects.count()

    undone = run("undo", "--batch", plan["batch"], "--reason", "back", "--json")
    assert undone.code == 0, undone.err
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and json.loads(undone.json["anchor"]) == json.loads(lines[1])
    last = CorrectionEvent.objects.order_by("-id").first()
    assert json.loads(lines[1])["event_id"] == last.pk and last.batch.planner == "undo"

    verified = run("verify", "--anchors", str(log), "--json")
    assert verified.code == 0, verified.out
    assert [c for c in verified.json["checks"] if c["name"] == "anchors"][0]["checked"] == 2

    # The anchors are held, not just read: a forged count in one of them is a finding.
    forged = json.loads(lines[0])
    forged["events"] += 1
    log.write_text(json.dumps(forged) + "\n" + lines[1] + "\n")
    assert run("verify", "--anchors", str(log)).code == 1
    assert anchors.read(str(log))  # still a well-formed log: the signature caught it


# -- exit 6: live traffic outlasts LEDGER_RETRY_SECONDS -------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_row_held_past_the_retry_window_exits_6_with_a_json_error(
    host, run, settings, raw_connection
):
    settings.LEDGER_RETRY_SECONDS = 1.0
    settings.LEDGER_ACCESS_LOCK_WAIT = 0.2
    opp, access = _capped(host)
    plan = _plan(run, opp)
    planned = PlannedChange.objects.filter(
        batch_id=plan["batch"], entity_kind="completed_work", excluded=""
    ).values_list("entity_id", flat=True)
    statuses = _statuses(access)
    counts = ledger_counts()
    # A request holds one planned work's row, as the host's form processor does while it runs.
    raw_connection.execute("BEGIN")
    raw_connection.execute(
        f"SELECT id FROM {table(CompletedWork)} WHERE id = %s FOR UPDATE", [min(planned)]
    )
    try:
        busy = run("apply", "--batch", plan["batch"], "--json")
    finally:
        raw_connection.execute("ROLLBACK")
    assert busy.code == 6, busy.err
    report = busy.json
    assert (report["error"], report["exit_code"]) == ("busy", 6)
    assert report["conflicts"] == [] and "gave up" in report["message"]
    (line,) = busy.err.strip().splitlines()[-1:]
    assert line.startswith("corrections: ") and "nothing was written" in line
    assert ledger_counts() == counts
    assert _statuses(access) == statuses
    assert CorrectionBatch.objects.get(pk=plan["batch"]).state == "planned"

    # Once the request is done, the same apply goes through.
    assert run("apply", "--batch", plan["batch"]).code == 0


# -- system checks -------------------------------------------------------------------------------


def _ledger_messages() -> dict[str, str]:
    return {m.id: m.msg for m in checks.run_checks() if (m.id or "").startswith("ledger.")}


def test_no_access_lock_is_warning_w001(settings):
    settings.LEDGER_ACCESS_LOCK = None
    found = _ledger_messages()
    assert list(found) == ["ledger.W001"]
    assert "LEDGER_ACCESS_LOCK is not set" in found["ledger.W001"]
    call_command("check")  # a warning: the check command still succeeds


def test_an_access_lock_that_cannot_be_imported_is_error_e001(settings):
    settings.LEDGER_ACCESS_LOCK = "ledger.locks.no_such_lock"
    found = _ledger_messages()
    assert list(found) == ["ledger.E001"]
    assert "'ledger.locks.no_such_lock' cannot be imported" in found["ledger.E001"]
    with pytest.raises(SystemCheckError, match="ledger.E001"):
        call_command("check")


@pytest.mark.parametrize(
    "path",
    [
        "ledger.locks.redis_access_lock",
        "commcare_connect.ledger_hooks.lock_accesses_for_transaction",
    ],
)
def test_a_configured_access_lock_passes_the_checks(settings, path):
    settings.LEDGER_ACCESS_LOCK = path
    assert _ledger_messages() == {}
