"""What the README's "Database" section promises of the embedded server, checked on the one
the tests run on: a Unix socket only, and — when run as root — a system user of its own that
owns the data folder, with every parent folder of the data and of the binaries open to others
(``o+rx``)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import psutil
import pytest
from django.db import connection

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="not on the embedded server"
)

SYSTEM_USER = "embedded_postgres"


def _server():
    from commcare_connect.embedded_db import get_server

    return get_server()


def _parents(path: Path) -> list[Path]:
    return list(path.resolve().parents)


def test_the_server_listens_on_a_unix_socket_only(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('listen_addresses'), inet_server_addr() IS NULL")
        assert cursor.fetchone() == ("", True)
    socket_dir = Path(_server().get_postmaster_info().socket_dir)
    assert [p.name for p in socket_dir.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]


@pytest.mark.skipif(os.geteuid() != 0, reason="run as an ordinary user: no system user is made")
def test_as_root_the_server_runs_as_its_own_system_user(db):
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    from commcare_connect.embedded_db import data_dir

    user = pwd.getpwnam(SYSTEM_USER)  # made by the package (useradd) on the first start
    server = psutil.Process(_server().get_pid())
    assert server.username() == SYSTEM_USER
    assert all(child.username() == SYSTEM_USER for child in server.children())

    data = data_dir()
    assert data.stat().st_uid == user.pw_uid  # the data folder is handed to that user
    open_to_others = stat.S_IROTH | stat.S_IXOTH
    closed = [
        str(folder)
        for folder in {*_parents(data), *_parents(Path(POSTGRES_BIN_PATH))}
        if folder.stat().st_mode & open_to_others != open_to_others
    ]
    assert closed == [], "parent folders without o+rx"
    assert os.access(POSTGRES_BIN_PATH / "postgres", os.X_OK)
    assert Path(POSTGRES_BIN_PATH / "postgres").stat().st_mode & stat.S_IXOTH
