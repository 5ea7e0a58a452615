"""Auditors' reads on a ledger of a given size: ``python -m benchmarks.reads --events N``.

Builds a database of its own (``--database``, dropped first): the synthetic host data of
``--visits`` visits and a hash-chained history of about ``--events`` events, written as the
ledger writes them (batches planned, approved, applied and undone). Then measures, each in a
fresh process, history lookups (visits, completed works, accesses; ``--lookups`` each) and
``verify`` with every check, ``--runs`` times, and prints the medians. Raw figures go to
``benchmarks/results/reads-N.json``.

The main harness (``benchmarks.run``) measures the same steps on the history it builds plus the
events of its own runs; this one reaches a given ledger size without the runs in between.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import env, report
from benchmarks.run import HarnessError, code_state, own_database

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reads")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="ledger_bench_reads")
    parser.add_argument("--drop", action="store_true")
    args = parser.parse_args(argv)
    env.setup(None)
    code = code_state()
    results: dict[str, list[dict]] = {"history": [], "verify": []}
    try:
        with own_database(args.database, drop=args.drop, prefix="ledger-reads-") as steps:
            print(f"Building {args.visits:,} visits and {args.events:,} events", flush=True)
            setup = steps.run(
                "setup", visits=args.visits, seed=args.seed, history_events=args.events
            )
            for run in range(args.runs):
                results["history"].append(
                    steps.run("history", seed=args.seed + run, lookups=args.lookups)
                )
                results["verify"].append(steps.run("verify"))
    except HarnessError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    if not all(r["ok"] for r in results["verify"]):
        print(f"verify found problems: {results['verify'][0]['problems']}", file=sys.stderr)
        return 1

    figures = report.Figures(results)
    events = results["verify"][0]["events"]
    verify_s = figures.median("verify")
    print(f"\n{events:,} events, median of {args.runs} runs, commit {code['commit']}\n")
    print("| Read | median | p99 |")
    print("|---|---:|---:|")
    for kind in ("visit", "completed_work", "access"):
        per = figures.median("history", f"{kind}.events_per_lookup")
        article = "an" if kind == "access" else "a"
        print(
            f"| history of {article} {kind.replace('_', ' ')} (~{per:.0f} events) "
            f"| {figures.median('history', f'{kind}.median_ms'):.2f} ms "
            f"| {figures.median('history', f'{kind}.p99_ms'):.2f} ms |"
        )
    print(f"| verify, all checks | {verify_s:.2f} s ({events / verify_s:,.0f} events/s) | — |")
    checks = results["verify"][0]["checks"]
    print("\nverify by check (first run): " + ", ".join(
        f"{name} {c['seconds']:.2f} s" for name, c in checks.items()
    ))  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"reads-{args.events}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"setup": setup, "results": results, "code": code}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
