"""Where recomputes run (``LEDGER_RECOMPUTE``): checked settings, Celery optional, a queue that
cannot be reached after the commit, and the progress line of ``--wait``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.db import connection

from ledger import checks, services
from ledger.cli.waiting import describe
from ledger.models import AccrualRecompute, CorrectionBatch
from ledger.recomputes import Progress
from tests.pytest_skips import skip_unprovided

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_mode_is_a_configuration_error(settings):
    settings.LEDGER_RECOMPUTE = "threads"
    assert [m.id for m in checks.check_recompute()] == ["ledger.E003"]
    settings.LEDGER_RECOMPUTE = "celery"
    assert checks.check_recompute() == []


def test_the_ledger_runs_without_celery():
    """Celery is an extra: every module but ledger.tasks imports, and inline is the default."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["celery"] = None  # as if it were not installed
        import django
        django.setup()
        import ledger
        from ledger import conf
        assert conf.get("RECOMPUTE") == "inline"
        for module in pkgutil.walk_packages(ledger.__path__, "ledger."):
            if module.name == "ledger.tasks" or ".contract." in module.name:
                continue
            importlib.import_module(module.name)
        try:
            importlib.import_module("ledger.tasks")
        except ImportError:
            print("ok")
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "commcare_connect.settings_test"}
    env.pop("LEDGER_RECOMPUTE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "ok", done.stderr[-3000:]


def test_the_progress_line_says_done_pending_busy_rate_and_eta():
    p = Progress(total=1000, done=350, pending=650, queued=640, busy=10, failed=0)
    assert describe(p, None) == "[#######.............] 350/1000 done · 650 pending · 10 busy"
    assert describe(p, 50.0) == (
        "[#######.............] 350/1000 done · 650 pending · 10 busy · 50.0/s · ETA 13s"
    )
    p = Progress(total=4, done=4, pending=0, queued=0, busy=0, failed=0)
    assert describe(p, 2.0) == "[####################] 4/4 done · 0 pending · 0 busy · 2.0/s"
    slow = Progress(total=30000, done=0, pending=30000, queued=30000, busy=0, failed=2)
    assert describe(slow, 7.0).endswith("0 busy · 2 failed · 7.0/s · ETA 1h11m")


@pytest.mark.django_db(transaction=True)
def test_a_queue_that_cannot_be_reached_leaves_the_apply_committed(make_capped_access):
    """After the commit nothing raises: the apply is reported as applied, its recomputes as
    pending and not queued (exit 1), and an inline recompute finishes them."""
    try:
        import celery  # noqa: F401
    except ImportError:
        skip_unprovided("celery", "not installed (requirements/standalone.txt)")
    access = make_capped_access(works=3, cap=1)
    plan = services.plan_over_cap([str(access.opportunity.opportunity_id)], reason="x")
    batch = plan.batch
    services.approve_batch(batch, "alice", plan.plan_digest)  # the child requires a reviewer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    env = {
        **os.environ,
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "LEDGER_RECOMPUTE": "celery",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
    }
    applied = subprocess.run(
        [sys.executable, "manage.py", "corrections", "apply", "--batch", batch,
         "--operator", "ledger-test", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert applied.returncode == 1, applied.stderr
    report = json.loads(applied.stdout)
    assert report["state"] == "applied" and report["recompute"] == "queued"
    assert report["queued_recomputes"] == 0 and report["pending_recomputes"] == 1
    assert any("could not be queued" in f for f in report["findings"]), report["findings"]
    assert [p["access_id"] for p in report["pending"]] == [access.pk]
    assert CorrectionBatch.objects.get(pk=batch).state == "applied"
    row = AccrualRecompute.objects.get(batch_id=batch)
    assert row.state == "pending" and row.queued_at is None

    assert services.recompute(batch).done == 1
    row.refresh_from_db()
    assert row.state == "done" and row.accrual_after == row.projected_after


def test_wait_changes_nothing_where_recomputes_run_inline(make_capped_access, run):
    access = make_capped_access(works=3, cap=1)
    batch = services.plan_over_cap([str(access.opportunity.opportunity_id)], reason="x").batch
    applied = run("apply", "--batch", batch, "--wait", "--json")
    assert applied.code == 0, applied.err
    report = json.loads(applied.out)
    assert report["recompute"] == "inline" and report["queued_recomputes"] == 0
    assert [a["state"] for a in report["accesses"]] == ["done"]
    assert "recomputes [" not in applied.err  # no progress bar: nothing was queued
