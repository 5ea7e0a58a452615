"""``corrections history``, ``batches`` and ``show`` on the incident after apply and undo."""

from __future__ import annotations

import datetime

import pytest

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from ledger.models import CorrectionBatch, CorrectionEvent

from .conftest import insert_events, make_batch


def _work_and_visits(story):
    work_id = story.incident.over_cap_work_ids["w1"]
    visits = list(
        UserVisit.objects.filter(completed_work_id=work_id)
        .exclude(status="trial")
        .order_by("id")
        .values_list("id", "xform_id")
    )
    return work_id, visits


def test_visit_history_names_batch_operators_reason_and_undo(undone, run):
    _, visits = _work_and_visits(undone)
    visit_id, xform_id = visits[0]

    result = run("history", "--visit", str(visit_id), "--json")
    assert result.code == 0, result.err
    body = result.json
    assert body["selector"] == {"kind": "visit", "value": str(visit_id), "resolved_id": visit_id}
    first, second = body["events"]
    assert first["id"] < second["id"]
    assert (first["from_status"], first["to_status"]) == ("approved", "over_limit")
    assert first["batch"] == undone.batch and first["planner"] == "over_cap"
    assert (first["planned_by"], first["applied_by"]) == ("alice", "bob")
    assert first["reason"] == "CI-639 over-cap approvals" and first["ticket"] == "CI-639"
    assert first["batch_state"] == "undone"
    assert first["inverted_by"] == second["id"]
    assert first["inverted_in_batch"] == undone.undo
    assert first["batch_reverted_by"] == undone.undo

    assert (second["from_status"], second["to_status"]) == ("over_limit", "approved")
    assert second["batch"] == undone.undo and second["planner"] == "undo"
    assert second["planned_by"] == second["applied_by"] == "carol"
    assert second["reason"] == "PM approved these visits"
    assert second["inverts"] == first["id"] and second["batch_reverts"] == undone.batch
    assert second["prev_hash"] and second["hash"]

    # The same two events by xform id; the human table names everything too.
    by_xform = run("history", "--xform-id", xform_id, "--json")
    assert [e["id"] for e in by_xform.json["events"]] == [first["id"], second["id"]]
    table = run("history", "--visit", str(visit_id), "--wide")
    assert table.code == 0
    for text in ("alice", "bob", "carol", undone.batch, undone.undo, "approved → over_limit",
                 f"undone by #{second['id']}", f"inverts #{first['id']}", "CI-639"):  # fmt: skip
        assert text in table.out, text


def test_work_access_opportunity_and_batch_selectors(undone, run):
    work_id, visits = _work_and_visits(undone)
    access = undone.incident.accesses["w1"]

    def ids(*args):
        result = run("history", *args, "--json")
        assert result.code == 0, result.err
        return [e["id"] for e in result.json["events"]]

    ledger = CorrectionEvent.objects.order_by("id")
    work_events = list(ledger.filter(completed_work_id=work_id).values_list("id", flat=True))
    assert len(work_events) == 2 * (1 + len(visits))  # the work and its visits, apply + undo
    assert ids("--completed-work", str(work_id)) == work_events
    assert ids("--access", str(access.pk)) == list(
        ledger.filter(access_id=access.pk).values_list("id", flat=True)
    )
    opp = undone.incident.opportunity_a
    all_events = list(ledger.filter(opportunity_id=opp.pk).values_list("id", flat=True))
    assert ids("--opportunity", str(opp.opportunity_id)) == all_events
    assert len(all_events) == 12
    assert ids("--batch", undone.batch) == list(
        ledger.filter(batch_id=undone.batch).values_list("id", flat=True)
    )
    assert len(ids("--batch", undone.undo)) == 6


def test_as_of_reconstructs_status_from_events(undone, run):
    work_id, visits = _work_and_visits(undone)

    def statuses(as_of: datetime.datetime, *selector):
        result = run("history", *selector, "--as-of", as_of.isoformat(), "--json")
        assert result.code == 0, result.err
        assert result.json["events"] is None
        return {(s["entity_kind"], s["entity_id"]): s for s in result.json["statuses"]}

    selector = ("--completed-work", str(work_id))
    before = statuses(undone.before_apply, *selector)
    assert {s["status"] for s in before.values()} == {"approved"}
    assert {s["basis"] for s in before.values()} == {"before_first_event"}
    assert set(before) == {("completed_work", work_id)} | {("visit", v) for v, _ in visits}

    between = statuses(undone.after_apply, *selector)
    assert {s["status"] for s in between.values()} == {"over_limit"}
    assert {(s["basis"], s["events_until_then"]) for s in between.values()} == {("event", 1)}

    after = statuses(undone.after_undo, *selector)
    assert {s["status"] for s in after.values()} == {"approved"}
    assert {s["events_until_then"] for s in after.values()} == {2}

    # The batch selector reconstructs from *all* of its entities' events, not only its own.
    by_batch = statuses(undone.after_undo, "--batch", undone.batch)
    assert {s["status"] for s in by_batch.values()} == {"approved"}

    # Human output; a naive time is UTC.
    naive = undone.after_apply.astimezone(datetime.UTC).replace(tzinfo=None).isoformat()
    table = run("history", "--visit", str(visits[0][0]), "--as-of", naive)
    assert table.code == 0 and "over_limit" in table.out and "to_status of" in table.out


def test_as_of_uses_events_only_even_when_host_changed_later(applied, run):
    work_id = applied.incident.over_cap_work_ids["w2"]
    CompletedWork.objects.filter(pk=work_id).update(status="pending")  # outside the ledger
    result = run(
        "history", "--completed-work", str(work_id), "--as-of",
        datetime.datetime.now(datetime.UTC).isoformat(), "--json",
    )  # fmt: skip
    work = [s for s in result.json["statuses"] if s["entity_kind"] == "completed_work"]
    assert work[0]["status"] == "over_limit"


def test_history_of_an_uncorrected_visit_is_empty(applied, run):
    visit = UserVisit.objects.filter(opportunity=applied.incident.opportunity_b).first()
    result = run("history", "--visit", str(visit.pk))
    assert result.code == 0
    assert "no corrections recorded" in result.out
    assert run("history", "--visit", str(visit.pk), "--json").json["events"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["history", "--visit", "999999999"], "no visit 999999999"),
        (["history", "--visit", "abc"], "expected an integer"),
        (["history", "--xform-id", "no-such-form"], "no visit with xform id"),
        (["history", "--completed-work", "999999999"], "no completed work"),
        (["history", "--access", "999999999"], "no access"),
        (["history", "--opportunity", "6f1c1f8e-0000-4000-8000-000000000000"], "no opportunity"),
        (["history", "--opportunity", "nope"], "expected its UUID"),
        (["history", "--batch", "6f1c1f8e-0000-4000-8000-000000000000"], "no batch"),
        (["history", "--batch", "not-a-uuid"], "a batch id is a UUID"),
        (["show", "--batch", "6f1c1f8e-0000-4000-8000-000000000000"], "no batch"),
        (["export", "--batch", "6f1c1f8e-0000-4000-8000-000000000000"], "no batch"),
        (["export", "--since", "yesterday"], "--since: 'yesterday' is not an ISO-8601 time"),
    ],
)
def test_bad_input_is_one_line_on_stderr(db, run, args, message):
    before = (CorrectionBatch.objects.count(), CorrectionEvent.objects.count())
    result = run(*args)
    assert result.code == 3  # bad input
    assert result.out == ""
    assert (CorrectionBatch.objects.count(), CorrectionEvent.objects.count()) == before
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.err


def test_bad_as_of_time(applied, run):
    result = run("history", "--batch", applied.batch, "--as-of", "2026-13-45")
    assert result.code == 3 and result.out == ""
    assert result.err.strip().splitlines() == [
        "corrections: --as-of: '2026-13-45' is not an ISO-8601 time (e.g. 2026-05-01T12:00:00Z)"
    ]


def test_batches_and_show(undone, run):
    listing = run("batches", "--json")
    assert listing.code == 0, listing.err
    rows = {b["id"]: b for b in listing.json["batches"]}
    original, undo = rows[undone.batch], rows[undone.undo]
    assert (original["state"], original["planner"]) == ("undone", "over_cap")
    assert (original["events"], original["visits"], original["works"]) == (6, 4, 2)
    assert original["reverted_by"] == undone.undo and original["reverted_by_state"] == "applied"
    assert (original["planned_by"], original["applied_by"]) == ("alice", "bob")
    assert (original["recomputes_done"], original["recomputes_pending"]) == (2, 0)
    assert (undo["planner"], undo["state"], undo["reverts"]) == ("undo", "applied", undone.batch)

    table = run("batches", "--wide")
    assert undone.batch in table.out and f"reverted by {undone.undo}" in table.out

    shown = run("show", "--batch", undone.batch, "--json")
    assert shown.code == 0, shown.err
    detail = shown.json
    assert detail["batch"]["id"] == undone.batch
    assert detail["scope"]["opportunities"] == [str(undone.incident.opportunity_a.opportunity_id)]
    assert detail["planned"]["works"] == 2 and detail["planned"]["visits"] == 4
    assert [r["state"] for r in detail["recomputes"]] == ["done", "done"]
    assert detail["skipped_conflicts"] == []
    events = CorrectionEvent.objects.filter(batch_id=undone.batch).order_by("id")
    assert detail["first_prev_hash"] == events.first().prev_hash
    assert detail["last_hash"] == events.last().hash

    human = run("show", "--batch", undone.batch)
    for text in ("over_cap", "undone", "CI-639", "alice", "bob", undone.undo, "2 done"):
        assert text in human.out, text


def test_show_lists_skipped_conflicts_and_pending_recomputes(db, run):
    batch = make_batch(skipped_conflicts=[
        {"entity_kind": "visit", "entity_id": 7, "completed_work_id": 3,
         "expected_status": "approved", "found_status": "rejected"},
    ])  # fmt: skip
    insert_events(batch, [
        {"entity_kind": "visit", "entity_id": 8, "opportunity_id": 1, "access_id": 1,
         "from_status": "approved", "to_status": "over_limit"},
    ])  # fmt: skip
    from ledger.models import AccrualRecompute

    AccrualRecompute.objects.create(batch=batch, access_id=1, opportunity_id=1, accrual_before=5)
    row = {b["id"]: b for b in run("batches", "--json").json["batches"]}[str(batch.pk)]
    assert row["skipped_conflicts"] == 1 and row["recomputes_pending"] == 1
    human = run("show", "--batch", str(batch.pk)).out
    assert "visit 7: expected approved, found rejected" in human
    assert "0 done, 1 pending" in human
    assert CorrectionBatch.objects.filter(pk=batch.pk).exists()


def test_show_a_planned_batch_with_exclusions(db, run):
    from commcare_connect.demo.incident import build_incident
    from ledger import services

    incident = build_incident()
    plan = services.plan_over_cap(
        [str(incident.opportunity_b.opportunity_id)], reason="CI-639 B", operator="alice"
    )
    detail = run("show", "--batch", plan.batch, "--json").json
    assert detail["batch"]["state"] == "planned" and detail["batch"]["events"] == 0
    assert detail["planned"]["works"] == 1 and detail["planned"]["visits"] == 2
    assert detail["planned"]["excluded"] == [{"reason": "paid", "works": 1, "visits": 2}]
    assert detail["first_event_id"] is None and detail["last_hash"] is None
    human = run("show", "--batch", plan.batch).out
    assert "excluded: paid 1 works, 2 visits" in human
    assert (
        run("history", "--batch", plan.batch)
        .out.strip()
        .endswith(f"(no corrections recorded for batch {plan.batch})")
    )


def test_streamed_json_equals_the_materialized_report(undone, run):
    import msgspec

    from ledger import selectors

    for extra in ([], ["--as-of", undone.after_apply.isoformat()]):
        printed = run("history", "--batch", undone.batch, "--json", *extra).json
        as_of = undone.after_apply if extra else None
        report = selectors.history_report("batch", undone.batch, as_of)
        assert printed == msgspec.json.decode(msgspec.json.encode(report))
