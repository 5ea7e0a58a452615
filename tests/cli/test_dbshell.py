"""``manage.py dbshell`` reaches the embedded server: the wheel's psql through its socket."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from commcare_connect.embedded_db import client

from .conftest import ROOT


def test_psql_of_the_wheel_against_the_socket(monkeypatch):
    monkeypatch.setattr(client, "socket_dir", lambda: "/run/embedded-socket")
    args, _ = client.DatabaseClient.settings_to_cmd_args_env(
        {"NAME": "postgres", "USER": "postgres", "HOST": "", "PORT": "5432", "OPTIONS": {}},
        ["-c", "select 1"],
    )
    assert args[0] == str(client.psql_path()) and client.psql_path().is_file()
    assert args[1:] == ["-U", "postgres", "-h", "/run/embedded-socket", "-c", "select 1",
                        "postgres"]  # fmt: skip


def test_a_missing_psql_is_one_clear_line(monkeypatch, tmp_path):
    from django.core.management.base import CommandError

    monkeypatch.setattr(client, "socket_dir", lambda: "/run/embedded-socket")
    monkeypatch.setattr(client, "psql_path", lambda: tmp_path / "psql")
    with pytest.raises(CommandError, match="psql -h /run/embedded-socket -U postgres postgres"):
        client.DatabaseClient.settings_to_cmd_args_env(
            {"NAME": "postgres", "USER": "postgres", "OPTIONS": {}}, []
        )


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="not on the embedded server")
def test_dbshell_runs_a_query():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_NAME")}
    env["DJANGO_SETTINGS_MODULE"] = "commcare_connect.settings"
    done = subprocess.run(
        [sys.executable, "manage.py", "dbshell", "--", "-Atc",
         "SELECT inet_server_addr() IS NULL, current_setting('server_version_num')"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    via_socket, version = done.stdout.strip().split("|")
    assert via_socket == "t" and int(version) >= 180000
