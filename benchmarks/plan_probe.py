"""Priced plans under a lock probe: ``python -m benchmarks.plan_probe --visits N --runs R``.

Builds the benchmark's data in a database of its own (on the embedded server, or on the one
``DATABASE_URL`` names: planner queries are worth timing on each PostgreSQL the host may run),
then plans the benchmark batch ``--runs`` times as ``make bench-e2e`` plans it — the visit list
of the batch, expanded, priced — while a second connection tries ``FOR UPDATE NOWAIT`` on the
batch's rows every 50 ms. Each plan is discarded before the next. Prints each plan's seconds
and the probe's tries and failures; exits 1 if a probe failed.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import env
from benchmarks.run import HarnessError, own_database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_probe")
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="ledger_bench_plans")
    parser.add_argument("--drop", action="store_true")
    args = parser.parse_args(argv)
    env.setup(None)
    try:
        with own_database(args.database, drop=args.drop, prefix="ledger-plans-") as steps:
            steps.run("setup", visits=args.visits, seed=args.seed, history_events=0)
            outcomes = [steps.run("plan_probed") for _ in range(args.runs)]
    except HarnessError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    print("\n| Run | Flips | Priced plan | Lock probe |")
    print("|---:|---:|---:|---|")
    for n, o in enumerate(outcomes, start=1):
        probe = o["lock_probe"]
        print(
            f"| {n} | {o['flips']:,} | {o['seconds']:.2f} s | "
            f"{probe['failures']} failed of {probe['attempts']} |"
        )
    return 0 if all(o["lock_probe"]["failures"] == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
