"""``apply --wait`` / ``undo --wait``: a batch's queued recomputes as a progress bar on stderr.

On a terminal the bar is redrawn in place; otherwise (a log, a pipe) a line is printed when the
counts change, at most every :data:`EVERY` seconds. ``-v 0`` silences it. The rate is the
recomputes finished per second since the wait began, the ETA what is pending at that rate.
"""

from __future__ import annotations

import time

from ledger.cli.output import Output
from ledger.recomputes import Progress

EVERY = 5.0
BAR = 20


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def describe(p: Progress, rate: float | None) -> str:
    """``[#######.............] 350/1000 done · 640 pending · 10 busy · 0 failed · 41.2/s ·
    ETA 15s``"""
    filled = BAR * p.done // p.total if p.total else BAR
    bar = "#" * filled + "." * (BAR - filled)
    text = f"[{bar}] {p.done}/{p.total} done · {p.pending} pending · {p.busy} busy"
    if p.failed:
        text += f" · {p.failed} failed"
    if rate is None:
        return text
    text += f" · {rate:.1f}/s"
    if p.pending and rate > 0:
        text += f" · ETA {_duration(p.pending / rate)}"
    return text


class RecomputeBar:
    """Called with each :class:`~ledger.recomputes.Progress` the wait reads."""

    def __init__(self, out: Output, *, clock=time.monotonic) -> None:
        self.out = out
        self.enabled = out.verbosity >= 1
        self.tty = bool(getattr(out.stderr, "isatty", lambda: False)())
        self.clock = clock
        self.start: float | None = None
        self.first_done = 0
        self.last_line = ""
        self.last_print = 0.0
        self.drawn = False

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.start is None:
            self.start, self.first_done = now, p.done
        elapsed = now - self.start
        rate = (p.done - self.first_done) / elapsed if elapsed >= 1 else None
        line = describe(p, rate)
        try:
            if self.tty:
                self.out.stderr.write("\r" + line[: self.out.width] + "\x1b[K")
                self.out.stderr.flush()
                self.drawn = True
            elif line != self.last_line and (
                now - self.last_print >= EVERY or not p.pending or not self.last_line
            ):
                self.out.stderr.write(f"recomputes {line}\n")
                self.out.stderr.flush()
                self.last_print = now
            self.last_line = line
        except (OSError, ValueError):  # stderr is gone: keep waiting, stop drawing
            self.enabled = False

    def close(self) -> None:
        if self.drawn and self.enabled:
            try:
                self.out.stderr.write("\n")
                self.out.stderr.flush()
            except (OSError, ValueError):
                pass
