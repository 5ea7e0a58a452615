"""The measured steps. Each runs in its own process (``python -m benchmarks.step NAME``).

A step returns a dict: ``seconds`` is the figure the table reports (the work itself, never the
process start-up or the untimed preparation around it), plus whatever else it counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import statistics
import time
from collections.abc import Callable

from django.core.management import call_command
from django.db import connection
from django.db.models import Count

from benchmarks import data, floor, script
from benchmarks.probe import Probe, rss_peak_mb

REASON = "Benchmark: flip a tenth of the visits to over_limit"
UNDO_REASON = "Benchmark: undo"
OPERATOR = "benchmarks"
REVIEWER = "benchmarks-review"


def _people() -> None:
    """The benchmark's operator and a second person to approve its plans (four eyes)."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    for name in (OPERATOR, REVIEWER):
        if not User.objects.filter(username=name).exists():
            User.objects.create_superuser(username=name, email=None, password=None)


STEPS: dict[str, Callable[[dict, Probe], dict]] = {}
# What plan_visits spends its time on (module-level names in ledger.services, timed by
# wrapping them): finding the rows, pricing them, storing the plan.
PLAN_PHASES = ("price", "_store_plan")


def step(fn):
    STEPS[fn.__name__] = fn
    return fn


def _ids_digest(works, visits) -> str:
    digest = hashlib.sha256()
    for pk in sorted(set(works)):
        digest.update(b"w%d," % pk)
    for pk in sorted(set(visits)):
        digest.update(b"v%d," % pk)
    return digest.hexdigest()[:16]


def _scalar(sql: str, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


# -- setup ------------------------------------------------------------------------------------


@step
def setup(params: dict, probe: Probe) -> dict:
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    migrated = time.perf_counter()
    call_command("seed_synthetic", visits=params["visits"], seed=params["seed"])
    seeded = time.perf_counter()
    batch = data.choose_batch(params["seed"], params.get("share", 0.1))
    chosen = time.perf_counter()
    history = data.write_history(params["history_events"])
    written = time.perf_counter()
    counts = {}
    for key, table in (
        ("opportunities", "opportunity_opportunity"),
        ("accesses", "opportunity_opportunityaccess"),
        ("claim_limits", "opportunity_opportunityclaimlimit"),
        ("completed_works", "opportunity_completedwork"),
        ("visits", "opportunity_uservisit"),
        ("events", "ledger_correctionevent"),
    ):
        counts[key] = _scalar(f"SELECT count(*) FROM {table}")
    from benchmarks.env import server_description

    return {
        "seconds": written - started,
        "phases": {
            "migrate": migrated - started,
            "seed_synthetic": seeded - migrated,
            "choose_batch": chosen - seeded,
            "history": written - chosen,
        },
        "batch": batch,
        "history": history,
        "counts": counts,
        "server": server_description(),
        "database_size": _scalar("SELECT pg_size_pretty(pg_database_size(current_database()))"),
    }


# -- planning over-cap ------------------------------------------------------------------------


@step
def plan_ledger(params: dict, probe: Probe) -> dict:
    from ledger.planners.over_cap import OverCapOptions, plan_over_cap

    started = time.perf_counter()
    rows = plan_over_cap(OverCapOptions(opportunity_ids=None))
    seconds = time.perf_counter() - started
    works = [r.entity_id for r in rows if r.entity_kind == "completed_work"]
    visits = [r.entity_id for r in rows if r.entity_kind == "visit"]
    return {
        "seconds": seconds,
        "works": len(works),
        "visits": len(visits),
        "excluded_works": sum(1 for r in rows if r.entity_kind == "completed_work" and r.excluded),
        "digest": _ids_digest(works, visits),
    }


@step
def scan_ledger(params: dict, probe: Probe) -> dict:
    from ledger import services

    started = time.perf_counter()
    report = services.scan_over_cap()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "opportunities": len(report.opportunities),
        "works": sum(o.works for o in report.opportunities),
        "visits": sum(o.visits for o in report.opportunities),
    }


@step
def plan_script(params: dict, probe: Probe) -> dict:
    started = time.perf_counter()
    plan = script.plan()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "works": len(plan.work_ids),
        "visits": len(plan.visit_ids),
        "digest": _ids_digest(plan.work_ids, plan.visit_ids),
    }


@step
def plan_floor(params: dict, probe: Probe) -> dict:
    started = time.perf_counter()
    works, visits = floor.plan()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "works": len(works),
        "visits": len(visits),
        "digest": _ids_digest(works, visits),
    }


# -- the batch: floor -------------------------------------------------------------------------


@step
def apply_floor(params: dict, probe: Probe) -> dict:
    ids = data.batch_ids()
    floor.prepare_events()  # not timed
    started = time.perf_counter()
    rows = floor.flip(ids, "over_limit")
    return {"seconds": time.perf_counter() - started, "rows": rows}


@step
def undo_floor(params: dict, probe: Probe) -> dict:
    rows = data.batch_rows()
    floor.prepare_events()  # not timed
    started = time.perf_counter()
    count = floor.restore(rows)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": count, "drift": data.drift()}


# -- the batch: the script --------------------------------------------------------------------


@step
def apply_script(params: dict, probe: Probe) -> dict:
    ids = data.batch_ids()
    visits = {pk: ("over_limit", None) for pk in ids["visit"]}
    works = {pk: ("over_limit", None) for pk in ids["completed_work"]}
    mark = probe.mark()
    started = time.perf_counter()
    flipped = script.apply(visits, works)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": sum(flipped), **probe.since(mark)}


@step
def undo_script(params: dict, probe: Probe) -> dict:
    rows = data.batch_rows()
    targets = {}
    for kind in ("visit", "completed_work"):
        ids, statuses, stamps = rows[kind]
        targets[kind] = {pk: (s, m) for pk, s, m in zip(ids, statuses, stamps, strict=True)}
    mark = probe.mark()
    started = time.perf_counter()
    flipped = script.apply(targets["visit"], targets["completed_work"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": sum(flipped), **probe.since(mark)}


def _per_access_counts(marks: list[int], end: int) -> list[int]:
    """Queries from one access's recompute to the next one's (the last access runs to ``end``,
    which may include a closing query or two, so it is left out when there are others)."""
    if len(marks) == 1:
        return [end - marks[0]]
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def _per_access(probe: Probe, marks: list[int], end: int) -> dict:
    per = _per_access_counts(marks, end) if marks else []
    if not per:
        return {"queries_per_access": None}
    return {
        "queries_per_access": round(statistics.mean(per), 2),
        "queries_per_access_min": min(per),
        "queries_per_access_max": max(per),
    }


@step
def recompute_script(params: dict, probe: Probe) -> dict:
    access_ids = data.batch_access_ids()
    marks: list[int] = []
    mark = probe.mark()
    started = time.perf_counter()
    done = script.recompute(access_ids, on_access=lambda _a: marks.append(probe.count))
    seconds = time.perf_counter() - started
    end = probe.count
    result = {
        "seconds": seconds,
        "accesses": done,
        **probe.since(mark),
        **_per_access(probe, marks, end),
    }
    if params.get("check"):
        result["drift"] = data.drift()
    return result


# -- the batch: the ledger --------------------------------------------------------------------


@step
def plan_ledger_visits(params: dict, probe: Probe) -> dict:
    from ledger import services
    from ledger.models import PlannedChange

    ids = data.batch_visit_ids()
    phases: dict[str, float] = {}
    originals = {name: getattr(services, name) for name in PLAN_PHASES}

    def timed(name):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

        return call

    for name in PLAN_PHASES:
        setattr(services, name, timed(name))
    staged = services.staged_visit_list

    @contextlib.contextmanager
    def timed_rows(*args, **kwargs):  # the rows: written to the planning session's table
        started = time.perf_counter()
        with staged(*args, **kwargs) as rows:
            phases["rows"] = time.perf_counter() - started
            yield rows

    services.staged_visit_list = timed_rows
    try:
        mark = probe.mark()
        started = time.perf_counter()
        _people()
        report = services.plan_visits(reason=REASON, visit_ids=ids, expand=True, operator=OPERATOR)
        seconds = time.perf_counter() - started
    finally:
        for name, original in originals.items():
            setattr(services, name, original)
        services.staged_visit_list = staged
    planned = dict(
        PlannedChange.objects.filter(batch_id=report.batch, excluded="")
        .values_list("entity_kind")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {
        "seconds": seconds,
        "batch": report.batch,
        "planned_visits": planned.get("visit", 0),
        "planned_works": planned.get("completed_work", 0),
        "accesses": len(report.accesses),
        "phases": phases,
        **probe.since(mark),
    }


def _time_copies(probe: Probe):
    """Time the projector's bulk writes too: COPY bypasses Django's execute wrappers."""
    from ledger import projector

    if not hasattr(projector, "insert_rows"):
        return lambda: None
    return probe.wrap(projector, "insert_rows", "COPY events (ledger.sql.insert_rows)")


def _run_ledger(call, probe: Probe) -> dict:
    """Time a ledger apply/undo in its two phases: the projection and the recompute."""
    from ledger import host

    phase: dict = {}
    marks: list[int] = []
    order: list[int] = []
    original = host.update_payment_accrued_for_user

    def counted(access, incremental=False):
        marks.append(probe.count)
        order.append(access.pk)
        return original(access, incremental=incremental)

    def progress(message: str) -> None:
        if "projected" in message and "end" not in phase:
            phase["end"] = time.perf_counter()
            phase["mark"] = probe.mark()
            phase["rss"] = rss_peak_mb()

    host.update_payment_accrued_for_user = counted
    restore = _time_copies(probe)
    try:
        start_mark = probe.mark()
        started = time.perf_counter()
        report = call(progress)
        finished = time.perf_counter()
    finally:
        host.update_payment_accrued_for_user = original
        restore()
    end_count = probe.count
    projection = {
        "queries": phase["mark"][0] - start_mark[0],
        "sql_seconds": round(phase["mark"][1] - start_mark[1], 4),
        "top_statements": _top_between(start_mark, phase["mark"]),
    }
    recompute = probe.since(phase["mark"])
    accesses = len(report.accesses)
    return {
        "batch": report.batch,
        "events": report.events,
        "visits": report.visits,
        "works": report.works,
        "projection_seconds": phase["end"] - started,
        "projection_rss_mb": phase["rss"],
        "projection": projection,
        "recompute_seconds": finished - phase["end"],
        "recompute": recompute,
        "accesses": accesses,
        "pending_recomputes": report.pending_recomputes,
        "mismatched_accruals": sum(1 for a in report.accesses if a.matches is False),
        **_per_access(probe, marks, end_count),
        **_queries_by_size(order, marks, end_count),
    }


def _queries_by_size(order: list[int], marks: list[int], end: int) -> dict:
    """Queries per access against the access's number of works: do they grow with it?"""
    if not order:
        return {}
    per = _per_access_counts(marks, end)
    order = order[: len(per)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT opportunity_access_id, count(*) FROM opportunity_completedwork "
            "WHERE opportunity_access_id = ANY(%s) GROUP BY 1",
            [order],
        )
        works = dict(cursor.fetchall())
    pairs = sorted((works.get(a, 0), q) for a, q in zip(order, per, strict=True))
    tenth = max(1, len(pairs) // 10)
    small, large = pairs[:tenth], pairs[-tenth:]
    return {
        "works_per_access_min": pairs[0][0],
        "works_per_access_max": pairs[-1][0],
        "queries_smallest_tenth": round(statistics.mean(q for _, q in small), 2),
        "queries_largest_tenth": round(statistics.mean(q for _, q in large), 2),
        "works_smallest_tenth": round(statistics.mean(w for w, _ in small), 1),
        "works_largest_tenth": round(statistics.mean(w for w, _ in large), 1),
    }


def _top_between(before, after, top: int = 6) -> list[dict]:
    rows = []
    for label, (n, t) in after[2].items():
        n0, t0 = before[2].get(label, (0, 0.0))
        if n > n0:
            rows.append((t - t0, n - n0, label))
    rows.sort(reverse=True)
    return [{"seconds": round(t, 4), "calls": n, "sql": label} for t, n, label in rows[:top]]


@step
def apply_ledger(params: dict, probe: Probe) -> dict:
    from ledger import services
    from ledger.models import CorrectionBatch

    _people()
    digest = CorrectionBatch.objects.get(pk=params["batch"]).plan_digest
    services.approve_batch(params["batch"], operator=REVIEWER, plan_digest=digest)  # not timed
    result = _run_ledger(
        lambda progress: services.apply_batch(
            params["batch"], operator=OPERATOR, progress=progress
        ),
        probe,
    )
    result["seconds"] = result["projection_seconds"]
    return result


@step
def undo_ledger(params: dict, probe: Probe) -> dict:
    """The undo as production runs it with approval on: planned and priced (timed apart),
    approved by someone else (not timed), then applied (the projection is the step's time)."""
    from ledger import services

    _people()
    started = time.perf_counter()
    plan = services.plan_undo(params["batch"], reason=UNDO_REASON, operator=OPERATOR)
    plan_seconds = time.perf_counter() - started
    services.approve_batch(plan.batch, operator=REVIEWER, plan_digest=plan.plan_digest)
    result = _run_ledger(
        lambda progress: services.apply_batch(plan.batch, operator=OPERATOR, progress=progress),
        probe,
    )
    result["plan_seconds"] = round(plan_seconds, 3)
    result["seconds"] = result["projection_seconds"]
    result["drift"] = data.drift()
    return result


# -- history, verify, export ------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _sample_entities(kind_filter: str, column: str, count: int, seed: int) -> list[int]:
    """``count`` values of ``column`` from events picked uniformly by id (seeded)."""
    low, high = (
        _scalar("SELECT min(id) FROM ledger_correctionevent"),
        _scalar("SELECT max(id) FROM ledger_correctionevent"),
    )
    rng = random.Random(seed)
    picks = [rng.randint(low, high) for _ in range(count * 2)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, {column} FROM ledger_correctionevent WHERE id = ANY(%s) {kind_filter}",
            [picks],
        )
        by_id = dict(cursor.fetchall())
    values = [by_id[p] for p in picks if by_id.get(p) is not None]
    return values[:count]


def _history_call():
    try:
        from ledger import selectors
    except ImportError:  # before the auditors' selectors existed
        selectors = None
    if selectors is not None and hasattr(selectors, "history"):
        return "ledger.selectors.history", selectors.history

    from ledger.models import CorrectionEvent

    fields = {"visit": "entity_id", "completed_work": "entity_id", "access": "access_id"}

    def orm(kind: str, value: str):
        query = CorrectionEvent.objects.filter(**{fields[kind]: int(value)})
        if kind != "access":
            query = query.filter(entity_kind=kind)
        return list(query.order_by("id"))

    return "CorrectionEvent ORM query", orm


def _time_lookups(call, kind: str, values: list[int]) -> dict:
    for value in values[:20]:  # warm the connection and the plan cache
        call(kind, str(value))
    times, events = [], 0
    for value in values:
        started = time.perf_counter()
        found = call(kind, str(value))
        times.append(time.perf_counter() - started)
        events += len(found)
    return {
        "lookups": len(times),
        "median_ms": statistics.median(times) * 1000,
        "p99_ms": _percentile(times, 0.99) * 1000,
        "max_ms": max(times) * 1000,
        "events_per_lookup": events / max(1, len(times)),
    }


@step
def history(params: dict, probe: Probe) -> dict:
    name, call = _history_call()
    seed = params["seed"]
    lookups = params["lookups"]
    visits = _sample_entities("AND entity_kind = 'visit'", "entity_id", lookups, seed)
    works = _sample_entities("AND entity_kind = 'completed_work'", "entity_id", lookups, seed + 1)
    accesses = _sample_entities("", "access_id", max(20, lookups // 5), seed + 2)
    by_visit = _time_lookups(call, "visit", visits)
    by_work = _time_lookups(call, "completed_work", works)
    by_access = _time_lookups(call, "access", accesses)
    return {
        "seconds": by_visit["median_ms"] / 1000,
        "selector": name,
        "events_in_ledger": _scalar("SELECT count(*) FROM ledger_correctionevent"),
        "visit": by_visit,
        "completed_work": by_work,
        "access": by_access,
    }


@step
def verify(params: dict, probe: Probe) -> dict:
    from ledger.verify import run_checks

    events = _scalar("SELECT count(*) FROM ledger_correctionevent")
    started = time.perf_counter()
    report = run_checks()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "events": events,
        "ok": report.ok,
        "checks": {c.name: {"seconds": c.seconds, "problems": c.problems} for c in report.checks},
        "problems": [p.message for p in report.problems[:10]],
    }


class _Discard(io.TextIOBase):
    """A text sink that counts what it is given and keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)

    def writable(self) -> bool:
        return True


@step
def export(params: dict, probe: Probe) -> dict:
    from ledger.export import export_events

    result = {}
    for fmt in ("jsonl", "csv"):
        sink = _Discard()
        started = time.perf_counter()
        summary = export_events(sink, batch=params["batch"], fmt=fmt)
        seconds = time.perf_counter() - started
        result[fmt] = {
            "seconds": seconds,
            "events": summary.events,
            "events_per_second": summary.events / seconds if seconds else None,
            "megabytes": round(sink.chars / 1e6, 1),
        }
    result["seconds"] = result["jsonl"]["seconds"]
    return result
