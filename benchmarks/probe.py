"""What a step process measures about itself: queries (count and time by statement) and RSS."""

from __future__ import annotations

import re
import resource
import time
from collections import defaultdict

_SPACES = re.compile(r"\s+")
_NUMBERS = re.compile(r"\b\d+\b")


def rss_peak_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _label(sql: str) -> str:
    text = _NUMBERS.sub("N", _SPACES.sub(" ", sql).strip())
    return text[:110]


class Probe:
    """A connection execute wrapper counting queries and timing them by statement shape."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.by_statement: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            self.count += 1
            self.seconds += elapsed
            entry = self.by_statement[_label(sql)]
            entry[0] += 1
            entry[1] += elapsed

    def record(self, label: str, seconds: float, calls: int = 1) -> None:
        """Count work that bypasses the execute wrapper (COPY through the raw cursor)."""
        self.count += calls
        self.seconds += seconds
        entry = self.by_statement[label]
        entry[0] += calls
        entry[1] += seconds

    def wrap(self, module, name: str, label: str):
        """Replace ``module.name`` by a version timed as ``label``; return a restorer."""
        original = getattr(module, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.record(label, time.perf_counter() - started)

        setattr(module, name, timed)
        return lambda: setattr(module, name, original)

    def mark(self) -> tuple[int, float, dict[str, tuple[int, float]]]:
        return self.count, self.seconds, {k: (v[0], v[1]) for k, v in self.by_statement.items()}

    def since(self, mark, top: int = 6) -> dict:
        """Queries, SQL time and the costliest statements since ``mark``."""
        count, seconds, before = mark
        rows = []
        for label, (n, t) in self.by_statement.items():
            n0, t0 = before.get(label, (0, 0.0))
            if n > n0:
                rows.append((t - t0, n - n0, label))
        rows.sort(reverse=True)
        return {
            "queries": self.count - count,
            "sql_seconds": round(self.seconds - seconds, 4),
            "top_statements": [
                {"seconds": round(t, 4), "calls": n, "sql": label} for t, n, label in rows[:top]
            ],
        }
