"""Recompute throughput: in process, and on 1, 2, … Celery worker processes.

``python -m benchmarks.recompute_workers --visits N [--workers 1,2] [--runs R] [--broker URL]``

1. Builds the benchmark's data in a database of its own (``--database``, dropped first): the
   synthetic host data of ``--visits`` visits and the benchmark's batch of whole accesses, as
   ``benchmarks.run`` does (without the event history, which a recompute does not read).
2. For each run and mode, makes every access of the batch pending in a batch of its own — the
   state a projection leaves — and times until none is pending: ``inline`` with
   ``ledger.services.recompute`` in this process; ``celery×N`` by queueing the batch
   (:func:`ledger.recomputes.enqueue`, ``LEDGER_RECOMPUTE_CHUNK`` accesses per task) to one
   ``celery worker --concurrency N`` on a Redis broker (``--broker``, or a redis-server started
   on a free local port), from the moment it is queued to the last row done.
3. Prints a table of accesses per second (median of the runs) and writes the raw figures to
   ``benchmarks/results/recompute-workers-N.json``.

Every run recomputes the same accesses from the same data, so the modes do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import env

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_broker(given: str | None = None) -> Iterator[str]:
    """The broker URL to use: ``given``, or a private redis-server started on a free local
    port (nothing kept on disk) for as long as the block runs."""
    if given is not None:
        yield given
        return
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("no redis-server: give --broker redis://…")
    import redis

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ledger-broker-") as folder:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                try:
                    redis.Redis("127.0.0.1", port).ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            else:
                raise SystemExit("redis-server did not start")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _build(database: str, visits: int, seed: int) -> dict:
    from benchmarks.run import Steps, recreate_database

    recreate_database(database)
    with tempfile.TemporaryDirectory(prefix="ledger-recompute-") as workdir:
        return Steps(database, Path(workdir)).run(
            "setup", visits=visits, seed=seed, history_events=0
        )


def _use(database: str) -> None:
    """Point this process's connection at the benchmark database."""
    from django.conf import settings
    from django.db import connection

    connection.close()
    settings.DATABASES["default"]["NAME"] = database
    connection.settings_dict["NAME"] = database


def _pending_batch(access_ids: list[int]) -> str:
    """A batch whose recompute of every access is pending, as a projection leaves it."""
    from django.db import connection

    from ledger.models import CorrectionBatch

    batch = CorrectionBatch.objects.create(
        planner="visit_list", reason="recompute throughput", planned_by="benchmark",
        plan_digest="0" * 64,
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO ledger_accrualrecompute
                   (batch_id, access_id, opportunity_id, state, accrual_before, created_at)
               SELECT %s, id, opportunity_id, 'pending', payment_accrued, now()
               FROM opportunity_opportunityaccess WHERE id = ANY(%s)""",
            [batch.pk, access_ids],
        )
    return str(batch.pk)


def _pending(batch: str) -> int:
    from ledger.models import AccrualRecompute

    return AccrualRecompute.objects.filter(batch_id=batch, state="pending").count()


def _inline(access_ids: list[int]) -> float:
    from ledger import services

    batch = _pending_batch(access_ids)
    started = time.perf_counter()
    run = services.recompute(batch)
    seconds = time.perf_counter() - started
    if run.pending:
        raise SystemExit(f"inline: {len(run.pending)} recomputes left pending")
    return seconds


class Worker:
    def __init__(self, broker: str, database: str, concurrency: int, log: Path) -> None:
        self.log = log
        self.handle = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "commcare_connect.celery_app", "worker",
             "--concurrency", str(concurrency), "--loglevel", "WARNING", "--without-gossip",
             "--without-mingle", "-n", f"bench-{os.getpid()}-{concurrency}@%h"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_NAME": database, "CELERY_BROKER_URL": broker},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, broker: str) -> None:
        from commcare_connect.celery_app import app

        deadline = time.monotonic() + 120
        while not app.control.ping(timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)
        self.handle.close()


def _celery(access_ids: list[int], worker_count: int, broker: str, database: str) -> float:
    from ledger import recomputes

    batch = _pending_batch(access_ids)
    with tempfile.TemporaryDirectory(prefix="ledger-worker-") as folder:
        worker = Worker(broker, database, worker_count, Path(folder) / "worker.log")
        try:
            worker.wait_ready(broker)
            started = time.perf_counter()
            recomputes.enqueue(batch)
            while _pending(batch):
                time.sleep(0.05)
            return time.perf_counter() - started
        finally:
            worker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recompute_workers")
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2", help="worker process counts, e.g. 1,2")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="ledger_bench_recompute")
    parser.add_argument("--broker", default=None, help="Redis URL (default: a private one)")
    parser.add_argument("--drop", action="store_true", help="drop the database when done")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]

    env.setup(None)
    from django.db import connection

    own_database = connection.settings_dict["NAME"]
    print(f"Building {args.visits:,} visits in {args.database}", flush=True)
    setup = _build(args.database, args.visits, args.seed)
    _use(args.database)
    from benchmarks import data
    from commcare_connect.celery_app import app
    from ledger import conf

    access_ids = data.batch_access_ids()
    print(
        f"  {len(access_ids):,} accesses to recompute ({setup['batch']['works']:,} works, "
        f"{setup['batch']['visits']:,} visits of the batch)",
        flush=True,
    )
    seconds: dict[str, list[float]] = {}
    try:
        with redis_broker(args.broker) as broker:
            app.conf.broker_url = broker
            for run in range(args.runs):
                for mode in ["inline", *(f"celery×{n}" for n in counts)]:
                    if mode == "inline":
                        took = _inline(access_ids)
                    else:
                        workers = int(mode.split("×")[1])
                        took = _celery(access_ids, workers, broker, args.database)
                    seconds.setdefault(mode, []).append(took)
                    print(
                        f"  run {run + 1} {mode:<9} {took:8.2f} s   "
                        f"{len(access_ids) / took:8.1f} accesses/s",
                        flush=True,
                    )
    finally:
        if args.drop:
            from benchmarks.run import drop_database

            _use(own_database)
            drop_database(args.database)
    base = None
    print(
        f"\n{len(access_ids):,} accesses, {conf.get('RECOMPUTE_CHUNK')} per task, "
        f"median of {args.runs} runs\n"
    )
    print("| mode | seconds | accesses/s | vs inline |")
    print("| --- | --- | --- | --- |")
    for mode, values in seconds.items():
        median = statistics.median(values)
        rate = len(access_ids) / median
        base = base or rate
        print(f"| {mode} | {median:.2f} | {rate:.1f} | {rate / base:.2f}× |")
    out = ROOT / "benchmarks" / "results" / f"recompute-workers-{args.visits}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"visits": args.visits, "accesses": len(access_ids), "seconds": seconds,
             "cpus": os.cpu_count(), "load": os.getloadavg()},
            indent=1,
        )
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
