"""Peak memory of a large correction: ``python -m benchmarks.memory --visits N --share S``.

Builds the benchmark's data in a database of its own with a batch of whole accesses covering
``--share`` of the visits (0.32 of 1,000,000 visits is about 500,000 flips), then plans, applies
and undoes it as ``benchmarks.run`` does, each step in a fresh process, and prints each step's
peak RSS — the projection's own peak apart from the process's. The recomputes are queued to a
broker no worker reads (``LEDGER_RECOMPUTE = "celery"`` on a private Redis), so the figures are
those of planning and projecting, which is what grows with the batch; the recompute runs an
access at a time wherever it runs.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import env
from benchmarks.recompute_workers import redis_broker
from benchmarks.run import HarnessError, own_database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument("--share", type=float, default=0.32, help="share of visits flipped")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="ledger_bench_memory")
    parser.add_argument("--drop", action="store_true")
    args = parser.parse_args(argv)
    env.setup(None)
    try:
        with (
            own_database(args.database, drop=args.drop, prefix="ledger-memory-") as steps,
            redis_broker() as url,
        ):
            queued = {"LEDGER_RECOMPUTE": "celery", "CELERY_BROKER_URL": url}
            setup = steps.run(
                "setup", visits=args.visits, seed=args.seed, history_events=0, share=args.share
            )
            batch = setup["batch"]
            planned = steps.run("plan_ledger_visits", queued)
            applied = steps.run("apply_ledger", queued, batch=planned["batch"])
            undone = steps.run("undo_ledger", queued, batch=applied["batch"])
    except HarnessError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    flips = batch["visits"] + batch["works"]
    print(
        f"\n{flips:,} flips ({batch['visits']:,} visits, {batch['works']:,} works) of "
        f"{batch['accesses']:,} accesses\n"
    )
    print("| Step | Seconds | Peak RSS | Projection's peak |")
    print("|---|---:|---:|---:|")
    for name, outcome in (("plan (priced, stored)", planned), ("apply", applied),
                          ("undo (planned, approved, applied)", undone)):  # fmt: skip
        projection = outcome.get("projection_rss_mb")
        print(
            f"| {name} | {outcome['seconds']:.1f} | {outcome['rss_peak_mb']:.0f} MB | "
            f"{f'{projection:.0f} MB' if projection else '—'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
