"""The benchmark harness: ``python -m benchmarks.run --visits N [--runs R] [--seed S]``.

1. (Re)creates a dedicated database (``--database``, default ``ledger_bench``) on the server
   the project's settings point at — the embedded PostgreSQL, or ``DATABASE_URL``'s — so the
   project's own data is never touched.
2. Builds the data there: ``migrate``, ``seed_synthetic --visits N``, the batch to flip (whole
   accesses covering about a tenth of the visits) and a synthetic event history (``N`` events by
   default) so history lookups run on a ledger of realistic size.
3. Runs each measured step ``--runs`` times, each time against its comparators on the same
   data, in a fresh process per step (its peak RSS is its own). The order of the three apply
   paths rotates between runs so no path always runs on the warmest cache.
4. Writes the table of medians and ratios to ``--out`` (``docs/benchmarks.md``) and prints it;
   raw figures go to ``benchmarks/results/``.

Exits non-zero when a step fails or the data is not back in its starting state after a step
that should have restored it (the measurements would be meaningless).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import env, report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = "docs/benchmarks.md"


class HarnessError(RuntimeError):
    pass


class Steps:
    """Runs ``python -m benchmarks.step NAME`` against the benchmark database."""

    def __init__(self, database: str, workdir: Path, verbose: bool = True) -> None:
        self.database = database
        self.workdir = workdir
        self.verbose = verbose
        self.counter = 0

    def run(self, name: str, environ: dict[str, str] | None = None, **params) -> dict:
        """Run step ``name`` with ``params``; ``environ`` adds to the process's environment."""
        self.counter += 1
        result = self.workdir / f"{self.counter:03d}-{name}.json"
        command = [
            sys.executable, "-m", "benchmarks.step", name, "--database", self.database,
            "--params", json.dumps(params), "--result", str(result),
        ]  # fmt: skip
        environ = dict(os.environ, **(environ or {}), **{env.DATABASE_ENV: self.database})
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=ROOT, env=environ)
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            raise HarnessError(f"step {name} failed (exit {completed.returncode})")
        outcome = json.loads(result.read_text())
        outcome["wall_seconds"] = wall
        if self.verbose:
            print(
                f"  {name:<20} {outcome['seconds']:9.3f} s   peak RSS "
                f"{outcome['rss_peak_mb']:6.1f} MB   ({wall:.1f} s with start-up)",
                flush=True,
            )
        return outcome


MEASURED_CODE = ("ledger", "commcare_connect", "benchmarks")


def code_state(since: str | None = None) -> dict:
    """The commit measured, whether the measured packages had uncommitted changes, and (with
    ``since``) which of their files commits made after ``since`` changed."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return "?"
        return done.stdout.rstrip()  # not lstrip: porcelain lines start with a space

    changed = git("status", "--porcelain", "--", *MEASURED_CODE)
    state = {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": [line[3:] for line in changed.splitlines()] if changed != "?" else ["?"],
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    if since is not None:
        moved = git("diff", "--name-only", since, "HEAD", "--", *MEASURED_CODE)
        state["committed_since"] = moved.splitlines() if moved != "?" else ["?"]
    return state


@contextlib.contextmanager
def own_database(name: str, *, drop: bool, prefix: str) -> Iterator[Steps]:
    """A benchmark's database, recreated, and a :class:`Steps` runner on it with a temporary
    work folder; with ``drop``, the database is dropped afterwards, whatever happened."""
    try:
        recreate_database(name)
        with tempfile.TemporaryDirectory(prefix=prefix) as folder:
            yield Steps(name, Path(folder))
    finally:
        if drop:
            drop_database(name)


def recreate_database(name: str, template: str | None = None) -> None:
    """Drop and create the benchmark database through the project's own connection; with
    ``template``, as a copy of that database."""
    from django.db import connection

    if name == connection.settings_dict["NAME"]:
        raise HarnessError(f"--database {name} is the project's own database; pick another")
    quote = connection.ops.quote_name
    # A copy is made by copying files after a checkpoint rather than WAL-logged (the
    # default): its writes are done before the caller starts, not flushed in the middle.
    copy = f" TEMPLATE {quote(template)} STRATEGY FILE_COPY" if template else ""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {quote(name)}{copy}")


def drop_database(name: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {connection.ops.quote_name(name)} WITH (FORCE)")


def _require_clean(outcome: dict, what: str) -> None:
    drift = outcome.get("drift")
    if drift and any(drift.values()):
        raise HarnessError(f"{what} did not restore the batch's rows: {drift}")


def _apply_paths(steps: Steps, run: int, record) -> str:
    """The three ways to flip the batch and put it back, in an order rotating with ``run``."""

    def floor_path():
        record("apply_floor", steps.run("apply_floor"))
        outcome = steps.run("undo_floor")
        _require_clean(outcome, "the raw-SQL restore")
        record("undo_floor", outcome)

    def script_path():
        record("apply_script", steps.run("apply_script"))
        record("recompute_script_apply", steps.run("recompute_script"))
        record("undo_script", steps.run("undo_script"))
        outcome = steps.run("recompute_script", check=True)
        _require_clean(outcome, "the script's reversal and recompute")
        record("recompute_script_undo", outcome)

    batches = {}

    def ledger_path():
        planned = steps.run("plan_ledger_visits")
        record("plan_ledger_visits", planned)
        applied = steps.run("apply_ledger", batch=planned["batch"])
        record("apply_ledger", applied)
        undone = steps.run("undo_ledger", batch=applied["batch"])
        _require_clean(undone, "the ledger's undo")
        record("undo_ledger", undone)
        batches["applied"] = applied["batch"]

    paths = [floor_path, script_path, ledger_path]
    shift = run % len(paths)
    for path in paths[shift:] + paths[:shift]:
        path()
    return batches["applied"]


def measure(args, steps: Steps) -> dict:
    results: dict[str, list[dict]] = {}

    def record(key: str, outcome: dict) -> None:
        results.setdefault(key, []).append(outcome)

    print(f"Building the data ({args.visits:,} visits, seed {args.seed})", flush=True)
    setup = steps.run(
        "setup", visits=args.visits, seed=args.seed, history_events=args.history_events
    )
    batch = setup["batch"]
    print(
        f"  batch: {batch['visits']:,} visits and {batch['works']:,} completed works of "
        f"{batch['accesses']:,} accesses; history: {setup['history']['events']:,} events",
        flush=True,
    )
    applied_batch = None
    for run in range(args.runs):
        print(f"Run {run + 1} of {args.runs}", flush=True)
        plans = {}
        for name in ("plan_ledger", "scan_ledger", "plan_script", "plan_floor"):
            plans[name] = steps.run(name)
            record(name, plans[name])
        digests = {plans[n]["digest"] for n in ("plan_ledger", "plan_script", "plan_floor")}
        if len(digests) != 1:
            found = {n: (plans[n]["works"], plans[n]["visits"]) for n in plans}
            raise HarnessError(f"the over-cap planners disagree (works, visits): {found}")
        applied_batch = _apply_paths(steps, run, record)
        planned = results["plan_ledger_visits"][-1]
        if (planned["planned_visits"], planned["planned_works"]) != (
            batch["visits"],
            batch["works"],
        ):
            raise HarnessError(
                f"the ledger planned {planned['planned_visits']} visits and "
                f"{planned['planned_works']} works; the batch has {batch['visits']} and "
                f"{batch['works']}"
            )
    print("History, verify, export", flush=True)
    for run in range(args.runs):
        record("history", steps.run("history", seed=args.seed + run, lookups=args.lookups))
        record("verify", steps.run("verify"))
        record("export", steps.run("export", batch=applied_batch))
    failed = [r for r in results["verify"] if not r["ok"]]
    if failed:
        raise HarnessError(f"verify found problems: {failed[0]['problems']}")
    return {"setup": setup, "results": results}


def _output_path(given: str | None, visits: int, results_dir: Path) -> Path:
    """``--out``; by default docs/benchmarks.md, unless that file reports a larger run.

    A small run (``make bench-small``, CI) then leaves the committed full-scale report alone
    and writes its table next to the raw figures instead.
    """
    if given is not None:
        out = Path(given)
        return out if out.is_absolute() else ROOT / out
    out = ROOT / DEFAULT_OUT
    previous = report.scale_of(out.read_text()) if out.exists() else None
    if previous is not None and previous > visits:
        kept = results_dir / f"benchmarks-{visits}.md"
        print(f"{DEFAULT_OUT} reports a run of {previous:,} visits; writing {kept} instead")
        return kept
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark the correction ledger against the one-off script and raw SQL.",
    )
    parser.add_argument("--visits", type=int, default=1_000_000, help="visits to seed")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic data")
    parser.add_argument(
        "--out",
        default=None,
        help=f"markdown report to write (default {DEFAULT_OUT}, unless that holds a larger run)",
    )
    parser.add_argument(
        "--database", default=env.DEFAULT_DATABASE, help="benchmark database (dropped first)"
    )
    parser.add_argument(
        "--history-events",
        type=int,
        default=None,
        help="synthetic events written before the runs (default: as many as visits)",
    )
    parser.add_argument("--lookups", type=int, default=None, help="history lookups per run")
    parser.add_argument("--drop", action="store_true", help="drop the benchmark database when done")
    args = parser.parse_args(argv)
    if args.visits < 100:
        parser.error("--visits must be at least 100")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.history_events is None:
        args.history_events = args.visits
    if args.lookups is None:
        args.lookups = 1000 if args.visits >= 100_000 else 200

    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    env.setup(None)  # the project's database: create the benchmark database from there
    machine = report.machine()
    code_before = code_state()
    created = False
    try:
        recreate_database(args.database)
        created = True
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as workdir:
            measured = measure(args, Steps(args.database, Path(workdir)))
    except HarnessError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        if args.drop and created:
            drop_database(args.database)
    measured.update(
        {
            "machine": machine,
            "command": command,
            "args": vars(args),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "harness_seconds": time.perf_counter() - started,
            "code": {"start": code_before, "end": code_state(code_before["commit"])},
        }
    )
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(exist_ok=True)
    raw = results_dir / f"visits-{args.visits}.json"
    raw.write_text(json.dumps(measured, indent=1, default=str))
    text = report.render(measured)
    out = _output_path(args.out, args.visits, results_dir)
    text = report.keep_notes(text, out.read_text() if out.exists() else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(text)
    print(f"Written to {out} (raw figures: {raw})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
