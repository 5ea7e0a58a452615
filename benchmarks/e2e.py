"""What an operator lives through: one correction from plan to the last recompute.

``python -m benchmarks.e2e --visits N [--workers 1,2] [--runs R] [--host-git DIR | --script F]``

1. Builds the benchmark's data once in a template database (``--database``): the synthetic
   host data and the batch of whole accesses that ``benchmarks.run`` flips.
2. For every path and run, copies the template (``CREATE DATABASE … TEMPLATE``, not timed) and
   runs the path in a fresh process on the copy, so every path starts from the same rows:
   the ledger with its recompute in process and on 1, 2, … Celery worker processes (started and
   ready before the clock starts, as a deployment's workers are), the host team's final
   remediation script, and the raw-SQL floor's flip.
3. Checks that the ledger and the script leave the same statuses and the same accruals, and
   that the lock probe (``FOR UPDATE NOWAIT`` on every batch row every 50 ms) never failed
   during planning.
4. Writes the table into ``--out`` (``docs/benchmarks.md``) between markers of its own, one
   block per scale, and the raw figures to ``benchmarks/results/e2e-N.json``.

The script is the host's own file, read at run time from a host checkout or its git directory
(``--host-git DIR --script-rev REV``, or ``--script FILE``); nothing of it is kept here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from benchmarks import env, report
from benchmarks.recompute_workers import Worker, redis_broker
from benchmarks.run import HarnessError, Steps, code_state, drop_database, recreate_database

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_PATH = "docs/plans/script.py"
SCRIPT_REV = "c36b843a"
BLOCK = re.compile(r"<!-- e2e:(\d+) -->.*?<!-- /e2e:\1 -->\n?", re.S)


def _script_source(args) -> tuple[str | None, str]:
    if args.script:
        return Path(args.script).read_text(), args.script
    git_dir = args.host_git or os.environ.get("LEDGER_HOST_GIT")
    if not git_dir:
        return None, "no host checkout given (--host-git or --script)"
    shown = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{args.script_rev}:{SCRIPT_PATH}"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        raise HarnessError(f"cannot read {SCRIPT_PATH} at {args.script_rev}: {shown.stderr}")
    return shown.stdout, f"the host's `{SCRIPT_PATH}` at `{args.script_rev}`"


class Paths:
    """Runs each path on a fresh copy of the template database."""

    def __init__(self, args, workdir: Path, broker: str | None, script: str | None) -> None:
        self.args = args
        self.workdir = workdir
        self.broker = broker
        self.script = script
        self.copy = f"{args.database}_run"
        self.steps = Steps(self.copy, workdir, verbose=False)

    def run(self, path: str) -> dict:
        recreate_database(self.copy, template=self.args.database)
        if path == "floor":
            return self.steps.run("e2e_floor")
        if path == "script":
            return self.steps.run("e2e_script", source=self.script)
        if path == "inline":
            return self.steps.run("e2e_ledger", {"LEDGER_RECOMPUTE": "inline"}, mode="inline")
        workers = int(path.split("×")[1])
        worker = Worker(self.broker, self.copy, workers, self.workdir / f"worker-{workers}.log")
        try:
            worker.wait_ready(self.broker)
            return self.steps.run(
                "e2e_ledger",
                {"LEDGER_RECOMPUTE": "celery", "CELERY_BROKER_URL": self.broker},
                mode=path,
            )
        finally:
            worker.stop()


def _check(results: dict[str, list[dict]]) -> list[str]:
    """Problems that would make the comparison meaningless."""
    problems = []
    reference = results.get("script", [None])[0]
    for path, outcomes in results.items():
        for outcome in outcomes:
            probe = outcome.get("lock_probe")
            if probe and (probe["failures"] or not probe["attempts"]):
                problems.append(f"{path}: lock probe {probe}")
            if path == "floor" or reference is None:
                continue
            for key in ("statuses_digest", "accruals_digest"):
                if outcome[key] != reference[key]:
                    problems.append(f"{path}: {key} differs from the script's")
    return problems


def _secs(value: float) -> str:
    return f"{value:.1f} s" if value < 600 else f"{value:.0f} s ({value / 60:.1f} min)"


LABELS = {
    "inline": "Ledger, recompute in the applying process",
    "script": "Host team's final script, once per opportunity",
    "floor": "Raw-SQL floor: the flip alone (events COPY + UPDATEs)",
}


def _label(path: str) -> str:
    if path.startswith("celery×"):
        n = int(path.split("×")[1])
        return f"Ledger, recompute on {n} Celery worker process{'es' if n > 1 else ''}"
    return LABELS[path]


def render(measured: dict) -> str:
    setup, results, args = measured["setup"], measured["results"], measured["args"]
    batch = setup["batch"]
    figures = report.Figures(results)
    script_total = figures.median("script")
    lines = [
        f"<!-- e2e:{args['visits']} -->",
        f"### End to end at {args['visits']:,} visits",
        "",
        f"`{measured['command']}` — median of {args['runs']} run(s), each path on a fresh copy "
        f"of the same database; commit `{measured['code']['start']['commit']}`, "
        f"{measured['server']}, finished {measured['finished']}.",
        "",
        f"The batch: {batch['visits']:,} visits and {batch['works']:,} completed works of "
        f"{batch['accesses']:,} accesses (whole accesses, about a tenth of the visits). The "
        f"script: {measured['script_from']}, run for each of "
        f"{results['script'][0]['opportunities'] if 'script' in results else '?'} opportunities "
        "with the xform ids of the batch's visits there.",
        "",
        "| Path | Priced plan | Approve | Apply (projection) | Recompute, last one done "
        "| End to end | vs the script | Recompute rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, outcomes in results.items():
        total = figures.median(path)
        ratio = "—"
        if script_total and path != "script":
            ratio = (
                f"{script_total / total:.2f}× faster"
                if total <= script_total
                else f"{total / script_total:.2f}× slower"
            )
        if "times" in outcomes[0]:
            recompute = figures.median(path, "times.recompute")
            rate = f"{batch['accesses'] / recompute:.1f} accesses/s"
            cells = [
                _secs(figures.median(path, "times.plan")),
                f"{figures.median(path, 'times.approve') * 1000:.0f} ms",
                _secs(figures.median(path, "times.projection")),
                _secs(recompute),
            ]
        else:
            rate = "—"
            cells = ["—", "—", "—", "—"]
        lines.append(
            f"| {_label(path)} | {' | '.join(cells)} | **{_secs(total)}** | {ratio} | {rate} |"
        )
    probes = [o["lock_probe"] for outs in results.values() for o in outs if "lock_probe" in o]
    attempts = sum(p["attempts"] for p in probes)
    failures = sum(p["failures"] for p in probes)
    lines += [
        "",
        f"- **Row locks while planning:** a second connection tried `SELECT … FOR UPDATE NOWAIT` "
        f"on every visit, completed work and access of the batch every 50 ms during each priced "
        f"plan: {failures} of {attempts} tries found a row locked.",
    ]
    rates = {
        p: batch["accesses"] / figures.median(p, "times.recompute")
        for p, o in results.items()
        if "times" in o[0]
    }
    if "celery×1" in rates and "celery×2" in rates:
        gain = rates["celery×2"] / rates["celery×1"]
        lines.append(
            f"- **Recompute throughput:** 2 workers do {gain:.2f}× "
            f"the work of 1 ({rates['celery×1']:.1f} → {rates['celery×2']:.1f} accesses/s; in "
            f"process {rates.get('inline', 0):.1f}/s) on this {measured['cpus']}-core machine, "
            "where the database server shares the same cores."
        )
    if "script" in results:
        same = "the same" if not measured["problems"] else "NOT the same"
        script = results["script"][0]
        ledger = next(o[0] for p, o in results.items() if "times" in o[0])
        lines.append(
            f"- **Same result:** every ledger path left {same} statuses and accruals as the "
            f"script on the batch's {batch['accesses'] - script['suspended_accesses']:,} active "
            "accesses (per access `payment_accrued`, and the sums of the works' saved worker "
            "and organisation amounts); their accruals went from "
            f"{results['floor'][0]['payment_accrued'] if 'floor' in results else '?':,} to "
            f"{script['payment_accrued']:,}."
        )
        lines.append(
            f"- **Suspended workers:** the batch holds {script['suspended_accesses']} suspended "
            "accesses. The script's recompute (the host's bulk task) skips them and leaves "
            f"{script['suspended_stale']} of them still accruing "
            f"{script['suspended_over_limit_accrued']:,} for works it has just flipped to "
            "over_limit; the ledger recomputes them too "
            f"({ledger['suspended_over_limit_accrued']:,} left on over-limit works). Their "
            "recomputes are in the ledger's time."
        )
    lines += [f"<!-- /e2e:{args['visits']} -->", ""]
    return "\n".join(lines)


def write_block(out: Path, block: str, visits: int) -> None:
    """Replace this scale's block in ``out``, or add it after the notes marker (kept by the
    main harness when it rewrites the file), in order of scale."""
    text = out.read_text() if out.exists() else ""
    if f"<!-- e2e:{visits} -->" in text:
        text = BLOCK.sub(lambda m: block if int(m.group(1)) == visits else m.group(0), text)
    else:
        marker = report.NOTES_MARKER
        heading = "## End to end: plan, approve, apply, every recompute done\n\n"
        if heading not in text:
            if marker not in text:
                text = text.rstrip("\n") + "\n\n" + marker + "\n"
            text = text.replace(marker, marker + "\n" + heading, 1)
        blocks = [(int(m.group(1)), m.group(0)) for m in BLOCK.finditer(text)]
        text = BLOCK.sub("", text)
        blocks.append((visits, block))
        joined = "".join(b if b.endswith("\n") else b + "\n" for _, b in sorted(blocks))
        text = text.replace(heading, heading + joined + "\n", 1)
    out.write_text(text)


def _print_outcome(run: int, path: str, outcome: dict) -> None:
    times = outcome.get("times", {})
    extra = ("  " + ", ".join(f"{k} {v:.2f}" for k, v in times.items())) if times else ""
    print(f"  run {run + 1} {path:<9} {outcome['seconds']:8.2f} s{extra}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__)
    parser.add_argument("--visits", type=int, default=200_000)
    parser.add_argument("--workers", default="1,2", help="Celery worker process counts")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="ledger_e2e")
    parser.add_argument("--broker", default=None, help="Redis URL (default: a private one)")
    parser.add_argument("--host-git", default=None, help="the host's git directory")
    parser.add_argument("--script-rev", default=SCRIPT_REV)
    parser.add_argument("--script", default=None, help="the script file itself")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--drop", action="store_true", help="drop the databases when done")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    command = "python -m benchmarks.e2e " + " ".join(sys.argv[1:] if argv is None else argv)

    env.setup(None)
    script, script_from = _script_source(args)
    server = env.server_description()
    started = time.perf_counter()
    code = code_state()
    results: dict[str, list[dict]] = {}
    try:
        # A broker only for the Celery paths.
        broker_or_none = redis_broker(args.broker) if counts else nullcontext(args.broker)
        with tempfile.TemporaryDirectory(prefix="ledger-e2e-") as folder, broker_or_none as broker:
            from commcare_connect.celery_app import app

            app.conf.broker_url = broker
            print(f"Building {args.visits:,} visits in {args.database}", flush=True)
            recreate_database(args.database)
            steps = Steps(args.database, Path(folder), verbose=False)
            setup = steps.run("setup", visits=args.visits, seed=args.seed, history_events=0)
            steps.run("e2e_prepare")
            paths = Paths(args, Path(folder), broker, script)
            order = ["floor", *(["script"] if script else []), "inline"]
            order += [f"celery×{n}" for n in counts]
            for run in range(args.runs):
                shift = run % len(order)
                for path in order[shift:] + order[:shift]:
                    outcome = paths.run(path)
                    results.setdefault(path, []).append(outcome)
                    _print_outcome(run, path, outcome)
    except HarnessError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        if args.drop:
            drop_database(f"{args.database}_run")
            drop_database(args.database)
    wanted = ("inline", *[f"celery×{n}" for n in counts], "script", "floor")
    ordered = {p: results[p] for p in wanted if p in results}
    measured = {
        "setup": setup,
        "results": ordered,
        "args": vars(args),
        "command": command,
        "server": f"PostgreSQL {server['version'].split()[1]} ({server['kind']})",
        "cpus": os.cpu_count(),
        "script_from": script_from,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "harness_seconds": time.perf_counter() - started,
        "code": {"start": code, "end": code_state(code["commit"])},
    }
    measured["problems"] = _check(ordered)
    raw = ROOT / "benchmarks" / "results" / f"e2e-{args.visits}.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps(measured, indent=1, default=str))
    block = render(measured)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    write_block(out, block, args.visits)
    print("\n" + block)
    print(f"Written to {out} (raw figures: {raw})")
    for problem in measured["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if measured["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
