"""Does something hold rows a live request needs? A second connection keeps trying them.

:class:`LockProbe` plays the part of the host's submissions: on a connection of its own, every
``interval`` seconds it opens a transaction, tries ``SELECT … FOR UPDATE NOWAIT`` on the given
rows of each table, and rolls back. A try that finds a row locked fails at once (SQLSTATE
55P03) and is counted; anything else wrong is kept in ``errors``. Zero failures over a run
means nothing held those rows for as long as a probe interval — the ledger's promise for
planning. Tests and the benchmarks use it alike::

    with LockProbe({CompletedWork: work_ids, UserVisit: visit_ids}) as probe:
        services.plan_visits(...)
    assert probe.attempts and not probe.failures
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping

from django.db import DatabaseError, connections

from ledger.retry import LOCK_NOT_AVAILABLE, sqlstate
from ledger.sql import int_array

INTERVAL = 0.05  # seconds between tries, as often as a busy worker submits


class LockProbe:
    """Try ``FOR UPDATE NOWAIT`` on ``rows`` (model or table name -> ids) every ``interval``
    seconds, from a thread with its own connection, between ``start()`` and ``stop()``."""

    def __init__(
        self,
        rows: Mapping[object, Iterable[int]],
        *,
        interval: float = INTERVAL,
        alias: str = "default",
    ) -> None:
        self.targets = [(_table(t), int_array(sorted(set(ids)))) for t, ids in rows.items()]
        self.interval = interval
        self.alias = alias
        self.attempts = 0
        self.failures = 0
        self.failed_tables: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LockProbe:
        self._thread = threading.Thread(target=self._run, name="lock-probe", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)
        return self

    def stop(self) -> LockProbe:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self

    def __enter__(self) -> LockProbe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        conn = connections[self.alias].copy()
        try:
            conn.ensure_connection()
            conn.set_autocommit(False)
            self._started.set()
            while not self._stop.is_set():
                began = time.monotonic()
                self._try(conn)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        except BaseException as error:  # noqa: BLE001 - reported to the caller through errors
            self.errors.append(error)
            self._started.set()
        finally:
            conn.close()

    def _try(self, conn) -> None:
        self.attempts += 1
        name = ""
        try:
            with conn.cursor() as cursor:
                for name, ids in self.targets:
                    cursor.execute(
                        f"SELECT count(*) FROM (SELECT id FROM {name} "
                        "WHERE id = ANY(%s::bigint[]) FOR UPDATE NOWAIT) held",
                        [ids],
                    )
        except DatabaseError as error:
            if sqlstate(error) != LOCK_NOT_AVAILABLE:
                raise
            self.failures += 1
            self.failed_tables[name] = self.failed_tables.get(name, 0) + 1
        finally:
            conn.rollback()


def _table(target) -> str:
    if isinstance(target, str):
        return target
    return connections["default"].ops.quote_name(target._meta.db_table)
