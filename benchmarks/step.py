"""Run one measured step in this process: ``python -m benchmarks.step NAME --result FILE``.

The orchestrator (:mod:`benchmarks.run`) starts one process per step so that each step's peak
RSS is its own. The step's outcome is written as JSON to ``--result``; a failing step exits
non-zero with its traceback on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks import env
from benchmarks.probe import Probe, rss_peak_mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step")
    parser.add_argument("name")
    parser.add_argument("--database", default=None)
    parser.add_argument("--params", default="{}", help="JSON object")
    parser.add_argument("--result", required=True, help="file to write the JSON outcome to")
    args = parser.parse_args(argv)

    env.setup(args.database)
    from django.db import connection

    from benchmarks import e2e_steps  # noqa: F401 - registers the end-to-end steps
    from benchmarks.steps import STEPS

    if args.name not in STEPS:
        parser.error(f"unknown step {args.name!r}; known: {', '.join(STEPS)}")
    params = json.loads(args.params)
    connection.ensure_connection()
    base = rss_peak_mb()
    probe = Probe()
    with connection.execute_wrapper(probe):
        outcome = STEPS[args.name](params, probe)
    outcome.setdefault("queries", probe.count)
    outcome["rss_base_mb"] = base
    outcome["rss_peak_mb"] = rss_peak_mb()
    with open(args.result, "w") as handle:
        json.dump(outcome, handle, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
