"""A real Celery worker process for the tests, on a Redis broker of the tests' own.

The broker is a ``redis-server`` started for the session on a free local port (never the
machine's shared Redis: another checkout's worker could take the messages). A worker is
``celery -A commcare_connect.celery_app worker`` in a process group of its own, pointed at the
test database (``DATABASE_NAME``), with a short visibility timeout so a killed worker's message
comes back within seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.pytest_skips import skip_unprovided

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT = 5  # seconds before a message a dead worker held is delivered again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path):
    """A private redis-server; returns (process, url). Skips the test when there is none (an
    error in CI, which installs it)."""
    try:
        import celery  # noqa: F401
    except ImportError:
        skip_unprovided("celery", "not installed (requirements/standalone.txt)")
    server = shutil.which("redis-server")
    if server is None:
        skip_unprovided("redis-server", "not on PATH (apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis("127.0.0.1", port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        process.terminate()
        skip_unprovided("redis-server", f"{server} did not answer on port {port}")
    return process, f"redis://127.0.0.1:{port}/0"


class Worker:
    """One ``celery worker`` process group; its log is kept for the test to read."""

    def __init__(
        self, broker: str, database: str, log: Path, concurrency: int = 1, **settings: str
    ) -> None:
        self.log = log
        env = {
            **os.environ,
            "DATABASE_NAME": database,
            "CELERY_BROKER_URL": broker,
            "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            **settings,
        }
        self.handle = open(log, "w")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "commcare_connect.celery_app", "worker",
             "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle",
             "-n", f"ledger-test-{uuid.uuid4().hex[:8]}@%h"],
            cwd=ROOT,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while " ready." not in self.text():
            assert self.process.poll() is None, f"the worker exited:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"the worker never got ready:\n{self.text()}"
            time.sleep(0.1)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """``kill -9`` the worker and its pool processes at once, as a crash would."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.handle.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=30)
        self.handle.close()


def wait_until(predicate, seconds: float = 60, what: str = "the condition", poll: float = 0.1):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(poll)
