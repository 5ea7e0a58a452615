"""Fixtures for the command-line tests: batches in every state, a fingerprint of everything the
ledger or the host could have written, and runs of the command under a timeout."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

from commcare_connect.demo.incident import IncidentData, build_incident
from ledger.testing import CommandResult, run_corrections

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail a run that takes longer than ``seconds`` (a hang) instead of waiting forever."""

    def expired(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def run_limited(*args: str, stdin: bytes | None = None, seconds: int = TIMEOUT) -> CommandResult:
    """``run_corrections`` under a time limit, with ``stdin`` as standard input."""
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = _Stdin(stdin)
    try:
        with time_limit(seconds):
            return run_corrections(*args)
    finally:
        sys.stdin = saved


def fingerprint() -> tuple:
    """Row counts of every ledger table, and digests of host statuses and accruals."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT
              (SELECT count(*) FROM ledger_correctionbatch),
              (SELECT count(*) FROM ledger_correctionevent),
              (SELECT count(*) FROM ledger_plannedchange),
              (SELECT count(*) FROM ledger_batchentry),
              (SELECT count(*) FROM ledger_accrualrecompute),
              (SELECT md5(string_agg(id || ':' || state || ':' || approved_by, ',' ORDER BY id))
                 FROM ledger_correctionbatch),
              (SELECT md5(string_agg(id || ':' || status || ':' || status_modified_date::text,
                                     ',' ORDER BY id)) FROM opportunity_uservisit),
              (SELECT md5(string_agg(id || ':' || status, ',' ORDER BY id))
                 FROM opportunity_completedwork),
              (SELECT md5(string_agg(id || ':' || payment_accrued, ',' ORDER BY id))
                 FROM opportunity_opportunityaccess)
            """
        )
        return cursor.fetchone()


@dataclass
class World:
    incident: IncidentData
    opp: str
    opp_b: str
    planned: str
    planned_digest: str
    applied: str
    undone: str
    undo: str
    discarded: str
    conflicted: str
    visit: int
    xform: str
    work: int
    access: int


@pytest.fixture
def world(db, ledger_operator) -> World:
    from django.contrib.auth import get_user_model

    from commcare_connect.opportunity.models import UserVisit

    incident = build_incident()
    opp = str(incident.opportunity_a.opportunity_id)
    opp_b = str(incident.opportunity_b.opportunity_id)

    def plan(opportunity: str) -> dict:
        result = run_corrections(
            "plan", "over-cap", "--opportunity", opportunity, "--reason", "x", "--json"
        )
        assert result.code == 0, result.err
        return result.json

    applied = plan(opp)["batch"]
    assert run_corrections("apply", "--batch", applied).code == 0
    undone_plan = plan(opp_b)["batch"]
    assert run_corrections("apply", "--batch", undone_plan).code == 0
    undo = run_corrections("undo", "--batch", undone_plan, "--reason", "y", "--json")
    assert undo.code == 0, undo.err
    planned = plan(opp_b)
    discarded = plan(opp_b)["batch"]
    assert run_corrections("discard", "--batch", discarded).code == 0
    conflicted = plan(opp_b)["batch"]
    # Someone flips one planned visit outside the ledger: applying that batch now conflicts.
    from ledger.models import PlannedChange

    change = (
        PlannedChange.objects.filter(batch_id=conflicted, entity_kind="visit", excluded="")
        .order_by("entity_id")
        .first()
    )
    UserVisit.objects.filter(pk=change.entity_id).update(status="pending")

    visit = UserVisit.objects.filter(pk=change.entity_id).first()
    User = get_user_model()
    User.objects.create_user(username="inactive", password=None, is_active=False)
    User.objects.create_user(username="nobody", password=None)
    return World(
        incident=incident,
        opp=opp,
        opp_b=opp_b,
        planned=planned["batch"],
        planned_digest=planned["plan_digest"],
        applied=applied,
        undone=undone_plan,
        undo=undo.json["batch"],
        discarded=discarded,
        conflicted=conflicted,
        visit=visit.pk,
        xform=visit.xform_id,
        work=visit.completed_work_id,
        access=visit.opportunity_access_id,
    )


def manage(*args: str, database: str, **kwargs) -> subprocess.Popen:
    """``manage.py corrections …`` in a child process on the given (committed) database."""
    env = {**os.environ, "DATABASE_NAME": database, "LEDGER_REQUIRE_APPROVAL": "0"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "corrections", *args],
        cwd=ROOT,
        env=env,
        **kwargs,
    )
