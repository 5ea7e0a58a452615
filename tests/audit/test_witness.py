"""The anchor witness, and the keys it signs with.

``corrections anchor`` runs apart from the application, under a role that can only read, with
a key the application never sees. Before it signs it verifies the segment since its previous
anchor, and a segment that fails is not signed. Its key must carry 256 bits, its ``key_id``
reveals nothing about it, and earlier keys keep verifying the anchors they signed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path

import pytest
from django.core import checks
from django.db import connection

from commcare_connect.demo.incident import build_incident
from ledger import anchors, privileges, services, verify
from ledger.models import CorrectionEvent

from .conftest import TEST_ANCHOR_KEY, forge_entry, insert_events, lift_all, make_batch, sql

OTHER_KEY = "c0ffee" * 11  # 264 bits, as hex


@pytest.fixture
def witness(applied, settings, tmp_path):
    """The applied incident, and a witness configured with a key and a log."""
    settings.LEDGER_ANCHOR_KEY = TEST_ANCHOR_KEY
    settings.LEDGER_ANCHOR_LOG = str(tmp_path / "anchors.jsonl")
    return applied, Path(settings.LEDGER_ANCHOR_LOG)


def _lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_witness_runs_under_a_read_only_role(witness, run):
    story, log = witness
    role = f"ledger_witness_{uuid.uuid4().hex[:8]}"
    sql(f"CREATE ROLE {role} NOSUPERUSER NOLOGIN")
    for statement in privileges.witness_statements(role):
        if not statement.startswith("--"):
            sql(statement)
    sql(f"SET ROLE {role}")
    try:
        assert "permission denied" in _error(
            "INSERT INTO ledger_batchentry (batch_id, action, actor, actor_id, at, details, "
            "hash_format, prev_hash, hash) SELECT batch_id, action, actor, actor_id, at, "
            "details, hash_format, prev_hash, hash FROM ledger_batchentry LIMIT 1"
        )
        assert "permission denied" in _error("UPDATE ledger_ledgerhead SET events = 0")
        first = run("anchor", "--json")
        assert first.code == 0, first.err
        last = CorrectionEvent.objects.order_by("-id").first()
        assert (first.json["event_id"], first.json["event_hash"]) == (last.pk, last.hash)
        # The next run verifies only what came after its previous anchor.
        again = run("anchor")
        assert again.code == 0, again.err
    finally:
        sql("RESET ROLE")
    assert len(_lines(log)) == 2
    assert verify.run_checks(["chain"], anchors=str(log)).ok


def _error(statement: str) -> str:
    from django.db import DatabaseError, transaction

    try:
        with transaction.atomic():
            sql(statement)
    except DatabaseError as error:
        return str(error)
    raise AssertionError(f"the database accepted: {statement}")


def test_the_witness_refuses_a_segment_that_fails(witness, roles, run):
    story, log = witness
    assert run("anchor").code == 0
    _, app = roles
    # The application's role chains an undo entry by someone who is not a user.
    sql(f"SET ROLE {app}")
    forge_entry(story.batch, "undo", "mallory", 987654, {"events": 0})
    sql("RESET ROLE")
    refused = run("anchor")
    assert refused.code == 1
    (line,) = refused.err.strip().splitlines()
    assert "refusing to sign: the segment since anchor of event" in line
    assert "'mallory' (user 987654) is not a user" in line
    assert len(_lines(log)) == 1  # nothing was signed


def test_the_witness_refuses_events_recorded_out_of_order(witness, run, roles):
    story, log = witness
    assert run("anchor").code == 0
    owner, _ = roles
    sql(f"SET ROLE {owner}")
    with lift_all():
        insert_events(make_batch(), [
            {"entity_kind": "visit", "entity_id": 31337, "opportunity_id": 1,
             "from_status": "approved", "to_status": "over_limit",
             "recorded_at": story.before_apply.replace(year=story.before_apply.year - 1)},
        ])  # fmt: skip
    sql("RESET ROLE")
    refused = run("anchor")
    assert refused.code == 1 and "recorded_at never decreases" in refused.err


def test_the_witness_refuses_when_its_previous_anchor_no_longer_holds(witness, run):
    story, log = witness
    assert run("anchor").code == 0
    last = CorrectionEvent.objects.order_by("-id").first()
    with lift_all():
        sql("DELETE FROM ledger_correctionevent WHERE id = %s", [last.pk])
    refused = run("anchor")
    assert refused.code == 1 and "the previous anchor no longer holds" in refused.err


def test_the_witness_refuses_a_log_line_it_did_not_sign(witness, run):
    story, log = witness
    assert run("anchor").code == 0
    line = _lines(log)[-1]
    line["signature"] = "0" * 64
    with open(log, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    refused = run("anchor")
    assert refused.code == 1 and "line 2: the signature does not match" in refused.err


@pytest.mark.django_db(transaction=True)
def test_apply_reports_a_refused_anchor_as_a_finding(settings, tmp_path, run):
    """Outside a transaction, apply anchors right after it commits; a refusal does not undo
    the commit, and the command exits 1 naming it."""
    settings.LEDGER_ANCHOR_KEY = TEST_ANCHOR_KEY
    settings.LEDGER_ANCHOR_LOG = str(tmp_path / "anchors.jsonl")
    incident = build_incident()
    plan = services.plan_over_cap(
        [str(incident.opportunity_a.opportunity_id)], reason="CI-639", operator="alice"
    )
    # An approval forged by the planner, though approval is not required here.
    from django.contrib.auth import get_user_model

    alice = get_user_model().objects.get(username="alice")
    forge_entry(plan.batch, "approve", "alice", alice.pk, {"plan_digest": plan.plan_digest})
    result = run("apply", "--batch", plan.batch, "--operator", "bob")
    assert result.code == 1
    assert "committed; the chain head was not anchored" in result.err
    assert "approved by its own planner" in result.err
    assert CorrectionEvent.objects.filter(batch_id=plan.batch).exists()


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ab", "test-anchor-key", "0123456789abcdef" * 3, "x" * 31])
def test_a_weak_key_is_refused(witness, run, settings, key):
    settings.LEDGER_ANCHOR_KEY = key
    result = run("anchor")
    assert result.code != 0 and "an anchor key needs 256" in result.err
    errors = [m for m in checks.run_checks() if m.id == "ledger.E002"]
    assert errors and "LEDGER_ANCHOR_KEY carries at most" in errors[0].msg
    settings.LEDGER_ANCHOR_KEY = TEST_ANCHOR_KEY
    settings.LEDGER_ANCHOR_KEYS = [key]
    assert [m.id for m in checks.run_checks() if m.id == "ledger.E002"] == ["ledger.E002"]


def test_the_key_id_reveals_nothing_about_the_key(witness, run):
    line = run("anchor", "--json").json
    key = TEST_ANCHOR_KEY.encode()
    assert line["anchor"] == 2
    assert line["key_id"] == hmac.new(key, b"ledger-anchor-key-id/2", "sha256").hexdigest()[:16]
    # Not a fingerprint of the key itself (which a short key could be found from).
    assert line["key_id"] not in hashlib.sha256(b"ledger-anchor-key:" + key).hexdigest()
    assert line["key_id"] not in hashlib.sha256(key).hexdigest()


def test_keys_rotate_and_old_anchors_still_verify(witness, run, settings):
    story, log = witness
    assert run("anchor").code == 0
    settings.LEDGER_ANCHOR_KEY = OTHER_KEY
    settings.LEDGER_ANCHOR_KEYS = [TEST_ANCHOR_KEY]
    assert run("anchor").code == 0  # its previous anchor was signed by the earlier key
    first, second = _lines(log)
    assert first["key_id"] != second["key_id"]
    assert verify.run_checks(["chain"], anchors=str(log)).ok
    settings.LEDGER_ANCHOR_KEYS = []
    report = verify.run_checks(["chain"], anchors=str(log))
    assert [p.message for p in report.problems] == [
        f"{log}, line 1: signed with an unknown key (key_id {first['key_id']}): forged, or its "
        "key is not configured (LEDGER_ANCHOR_KEYS)"
    ]


def test_anchors_of_the_first_format_still_verify(witness, settings):
    """Lines written before key ids were HMACs carry the old fingerprint; they still check."""
    story, log = witness
    key = TEST_ANCHOR_KEY.encode()
    head = anchors._chain_end(CorrectionEvent)
    entry = anchors._chain_end(anchors.BatchEntry)
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (at,) = cursor.fetchone()
    old = anchors.sign(
        anchors.Anchor(
            anchor=1, at=at, event_id=head[0], event_hash=head[1], events=head[2],
            entry_id=entry[0], entry_hash=entry[1], entries=entry[2],
            key_id=hashlib.sha256(b"ledger-anchor-key:" + key).hexdigest()[:12],
        ),
        key,
    )  # fmt: skip
    log.write_text(anchors.encode(old) + "\n")
    assert verify.run_checks(["chain"], anchors=str(log)).ok
