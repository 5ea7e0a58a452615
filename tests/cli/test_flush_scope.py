"""The ledger's flush is installed by test settings only; Django's flush stays everyone else's."""

from __future__ import annotations

import subprocess
import sys

from django.core.management import get_commands

from .conftest import ROOT


def test_test_settings_install_the_ledgers_flush():
    assert get_commands()["flush"] == "ledger.flushable"


def test_the_projects_own_settings_keep_djangos_flush():
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'commcare_connect.settings'; "
        "django.setup(); from django.core.management import get_commands; "
        "print(get_commands()['flush'])"
    )
    env_free = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )  # fmt: skip
    assert env_free.returncode == 0, env_free.stderr
    assert env_free.stdout.strip() == "django.core"


def test_the_ledger_app_itself_ships_no_flush():
    assert not (ROOT / "ledger" / "management" / "commands" / "flush.py").exists()
