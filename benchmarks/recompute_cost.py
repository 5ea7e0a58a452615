"""What one access's recompute costs as its works grow: ``python -m benchmarks.recompute_cost``.

On the benchmark database (``--database``, as left by ``benchmarks.run``), recomputes a sample
of accesses of every size with the host's own code (``ledger.host.recompute_access``), each in
a transaction that is rolled back, and records per access: works, wall time, the time spent
waiting on the database and on the host's ``bulk_update`` statement alone. Prints the medians
per size band and a least-squares fit of time against works (constant, linear and square
terms), which is what ``docs/scale.md`` extrapolates to larger accesses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks import env

ROOT = Path(__file__).resolve().parent.parent


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares of y = a + b·x + c·x² (normal equations, three unknowns)."""
    s = [sum(x**k for x in xs) for k in range(5)]
    t = [sum(y * x**k for x, y in zip(xs, ys, strict=True)) for k in range(3)]
    m = [[s[0], s[1], s[2], t[0]], [s[1], s[2], s[3], t[1]], [s[2], s[3], s[4], t[2]]]
    for i in range(3):
        pivot = m[i][i]
        m[i] = [v / pivot for v in m[i]]
        for j in range(3):
            if j != i:
                factor = m[j][i]
                m[j] = [a - factor * b for a, b in zip(m[j], m[i], strict=True)]
    return m[0][3], m[1][3], m[2][3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recompute_cost")
    parser.add_argument("--database", default=env.DEFAULT_DATABASE)
    parser.add_argument("--per-size", type=int, default=4, help="accesses sampled per size")
    args = parser.parse_args(argv)
    env.setup(args.database)
    from django.db import connection, transaction

    from ledger import host

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT works, (array_agg(id ORDER BY id))[1:%s]
               FROM (SELECT a.id, count(w.id) AS works
                     FROM opportunity_opportunityaccess a
                     JOIN opportunity_completedwork w ON w.opportunity_access_id = a.id
                     WHERE NOT a.suspended GROUP BY a.id) sized
               GROUP BY works ORDER BY works""",
            [args.per_size],
        )
        sample = [(works, pk) for works, ids in cursor.fetchall() for pk in ids]

    rows = []
    for works, pk in sample:
        spent = {"db": 0.0, "update": 0.0}

        def timer(execute, sql, params, many, context, spent=spent):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                took = time.perf_counter() - started
                spent["db"] += took
                if sql.lstrip().startswith('UPDATE "opportunity_completedwork"'):
                    spent["update"] += took

        with connection.execute_wrapper(timer):
            started = time.perf_counter()
            with transaction.atomic():
                host.recompute_access(pk)
                transaction.set_rollback(True)
            wall = time.perf_counter() - started
        rows.append({"works": works, "wall": wall, **spent})

    xs = [r["works"] for r in rows]
    fits = {key: _fit(xs, [r[key] * 1000 for r in rows]) for key in ("wall", "db", "update")}
    print(f"{len(rows)} accesses recomputed (rolled back), {min(xs)}–{max(xs)} works each\n")
    print("| works | accesses | wall ms | database ms | bulk_update ms |")
    print("|---:|---:|---:|---:|---:|")
    bands = [(1, 10), (11, 20), (21, 30), (31, 45), (46, 60), (61, 10_000)]
    for low, high in bands:
        band = [r for r in rows if low <= r["works"] <= high]
        if band:
            keys = ("wall", "db", "update")
            med = {k: statistics.median(r[k] for r in band) * 1000 for k in keys}
            print(
                f"| {low}–{high if high < 10_000 else max(xs)} | {len(band)} | {med['wall']:.1f} "
                f"| {med['db']:.1f} | {med['update']:.1f} |"
            )
    print("\nfit, ms = a + b·works + c·works²:")
    for key, (a, b, c) in fits.items():
        at = {n: a + b * n + c * n * n for n in (21, 73, 198)}
        print(
            f"  {key:<7} a={a:.3f} b={b:.4f} c={c:.6f}   "
            + "  ".join(f"{n} works: {v:.1f} ms" for n, v in at.items())
        )
    out = ROOT / "benchmarks" / "results" / "recompute-cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "fits": fits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
