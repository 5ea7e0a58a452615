"""``corrections verify``: clean on real data, and each check catches what it is for."""

from __future__ import annotations

import pgtrigger
import pytest
from django.db import connection

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from ledger import verify
from ledger.models import AccrualRecompute, CorrectionEvent

from .conftest import insert_events, lift_all, make_batch, sql

EVENT_GUARD = "ledger.CorrectionEvent:ledger_event_append_only"
EVENTS = CorrectionEvent._meta.db_table


def _problems(report, check):
    return [p for p in report.problems if p.check == check]


def test_clean_after_apply_and_undo(undone, run):
    result = run("verify")
    assert result.code == 0, result.out + result.err
    assert "all checks passed" in result.out
    body = run("verify", "--json").json
    assert body["ok"] is True and body["problems"] == []
    assert [c["name"] for c in body["checks"]] == list(verify.CHECKS)
    assert all(c["ok"] for c in body["checks"])
    head = CorrectionEvent.objects.order_by("-id").first()
    assert body["head"]["last_event_id"] == head.pk and body["head"]["last_hash"] == head.hash


def test_drift_names_entity_event_and_statuses(applied, run):
    work_id = applied.incident.over_cap_work_ids["w1"]
    visit = UserVisit.objects.filter(completed_work_id=work_id, status="over_limit").first()
    UserVisit.objects.filter(pk=visit.pk).update(status="approved")  # outside the ledger
    last = CorrectionEvent.objects.filter(entity_kind="visit", entity_id=visit.pk).last()

    result = run("verify", "--check", "drift", "--json")
    assert result.code == 1
    (problem,) = result.json["problems"]
    assert problem["entity_kind"] == "visit" and problem["entity_id"] == visit.pk
    assert problem["event_id"] == last.pk
    assert (problem["expected"], problem["found"]) == ("over_limit", "approved")

    human = run("verify")
    assert human.code == 1 and "FAILED" in human.out and f"visit {visit.pk}" in human.out


def test_drift_reports_a_deleted_host_row(applied):
    work_id = applied.incident.over_cap_work_ids["w2"]
    # The host keeps visits when a work goes (DO_NOTHING): detach them first.
    UserVisit.objects.filter(completed_work_id=work_id).update(completed_work=None)
    CompletedWork.objects.filter(pk=work_id).delete()
    report = verify.run_checks(["drift"])
    assert not report.ok
    (problem,) = _problems(report, "drift")
    assert (problem.entity_kind, problem.entity_id) == ("completed_work", work_id)
    assert "gone" in problem.message and problem.found is None


def test_edited_event_breaks_the_chain(applied, run):
    target = CorrectionEvent.objects.filter(batch_id=applied.batch).order_by("id")[2]
    with pgtrigger.ignore(EVENT_GUARD), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {EVENTS} SET reason = 'nothing to see' WHERE id = %s", [target.pk])
    result = run("verify", "--check", "chain", "--json")
    assert result.code == 1
    (problem,) = result.json["problems"]
    assert problem["event_id"] == target.pk and "edited" in problem["message"]
    assert result.json["checks"][0]["note"] == f"first broken event: {target.pk}"


def test_rehashed_edit_breaks_the_next_link(applied):
    events = list(CorrectionEvent.objects.filter(batch_id=applied.batch).order_by("id"))
    target, following = events[1], events[2]
    from ledger import chain

    fields = {name: getattr(target, name) for name in (*chain.CONTENT_FIELDS, "hash_format")}
    fields["batch_id"] = str(target.batch_id)
    fields["to_status"] = "approved"
    forged = chain.event_hash(target.prev_hash, fields)
    with pgtrigger.ignore(EVENT_GUARD), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {EVENTS} SET to_status = 'approved', hash = %s WHERE id = %s",
            [forged, target.pk],
        )
    report = verify.run_checks(["chain"])
    assert [p.event_id for p in _problems(report, "chain")] == [following.pk]
    assert "prev_hash" in report.problems[0].message


def test_deleted_event_breaks_the_chain(applied):
    events = list(CorrectionEvent.objects.filter(batch_id=applied.batch).order_by("id"))
    with pgtrigger.ignore(EVENT_GUARD), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {EVENTS} WHERE id = %s", [events[3].pk])
    report = verify.run_checks(["chain"])
    # The link after the hole breaks, and the head no longer counts the chain's events.
    assert [p.event_id for p in report.problems] == [events[4].pk, events[-1].pk]
    assert "the chain head names" in report.problems[1].message


def test_continuity_breaks_are_named(db):
    batch = make_batch()
    common = {"entity_kind": "visit", "entity_id": 41, "opportunity_id": 1}
    insert_events(batch, [
        {**common, "from_status": "approved", "to_status": "over_limit"},
        {**common, "from_status": "pending", "to_status": "approved"},
    ])  # fmt: skip
    report = verify.run_checks(["continuity", "chain"])
    (problem,) = report.problems
    assert problem.check == "continuity" and problem.entity_id == 41
    assert (problem.expected, problem.found) == ("over_limit", "pending")


def test_pending_recompute_fails(applied, run):
    AccrualRecompute.objects.create(
        batch_id=applied.batch, access_id=applied.incident.accesses["w3"].pk,
        opportunity_id=applied.incident.opportunity_a.pk, accrual_before=0,
    )  # fmt: skip
    result = run("verify", "--check", "recomputes", "--json")
    assert result.code == 1
    (problem,) = result.json["problems"]
    assert problem["batch"] == applied.batch and "recompute --pending" in problem["message"]


def test_disabled_or_missing_trigger_fails(db):
    assert verify.run_checks(["triggers"]).ok
    (model, trigger), *_ = [
        (m, t) for m, t in verify.ledger_triggers() if t.name == "ledger_event_append_only"
    ]
    pgid = trigger.get_pgid(model)
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {EVENTS} DISABLE TRIGGER {pgid}")
    report = verify.run_checks(["triggers"])
    assert [p.message for p in report.problems] == [
        f"trigger ledger.CorrectionEvent:ledger_event_append_only on public.{EVENTS} is disabled, "
        "not enabled in the ordinary way"
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER {pgid} ON {EVENTS}")
    report = verify.run_checks(["triggers"])
    assert [p.message for p in report.problems] == [
        f"trigger ledger.CorrectionEvent:ledger_event_append_only is not installed on "
        f"public.{EVENTS}"
    ]


def test_batch_state_consistency(db):
    orphan_undone = make_batch()
    orphan_undone.state = "undone"
    orphan_undone.save(update_fields=["state"])
    planned_with_events = make_batch(state="planned")
    insert_events(planned_with_events, [
        {"entity_kind": "visit", "entity_id": 5, "opportunity_id": 1,
         "from_status": "approved", "to_status": "over_limit"},
    ])  # fmt: skip
    report = verify.run_checks(["batches"])
    messages = sorted(p.message for p in report.problems)
    assert messages == sorted([
        f"batch {orphan_undone.pk} is undone but no applied undo batch reverts it",
        f"batch {planned_with_events.pk} is planned yet has events",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("story", "state", "inverted"),
    [("applied", "undone", 0), ("applied", "partially_undone", 0),
     ("undone", "applied", "all"), ("undone", "partially_undone", "all")],
)  # fmt: skip
def test_a_batch_state_that_disagrees_with_its_inverted_events(db, request, story, state, inverted):
    """A batch's state against how many of its events are inverted, whether the verify run
    reads the counts for ``batches`` alone or shares them with ``lifecycle``."""
    batch = request.getfixturevalue(story).batch
    events = CorrectionEvent.objects.filter(batch_id=batch).count()
    with lift_all():
        sql("UPDATE ledger_correctionbatch SET state = %s WHERE id = %s", [state, batch])
    expected = (
        f"batch {batch} is {state} but {events if inverted == 'all' else 0} of its {events} "
        "events are inverted"
    )
    for names in (["batches"], ["lifecycle", "batches"], None):
        report = verify.run_checks(names, sample=0)
        assert expected in [p.message for p in report.problems if p.check == "batches"]
    report = verify.run_checks(["batches"])
    assert sum(1 for p in report.problems if "events are inverted" in p.message) == 1


def test_unknown_check_name(db):
    from ledger.errors import LedgerError

    with pytest.raises(LedgerError):
        verify.run_checks(["nope"])


@pytest.mark.django_db(transaction=True)
def test_runs_in_its_own_read_only_snapshot_outside_a_transaction():
    assert not connection.in_atomic_block
    report = verify.run_checks()
    assert report.ok, report.problems
    assert not connection.in_atomic_block


def _setting(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


def test_local_settings_hold_inside_and_are_restored_after(db):
    """verify spreads its scans over parallel workers for its own statements only: inside a
    caller's transaction, the caller's settings are back once it returns."""
    from ledger.sql import local_settings

    before = _setting("parallel_tuple_cost")
    with local_settings(verify.PARALLEL_READS):
        assert _setting("parallel_tuple_cost") == verify.PARALLEL_READS["parallel_tuple_cost"]
        assert _setting("parallel_tuple_cost") != before
    assert _setting("parallel_tuple_cost") == before
    assert verify.run_checks(["chain", "drift"]).ok
    assert _setting("parallel_tuple_cost") == before
