"""Printing for the ``corrections`` command: tables for people, msgspec JSON for machines.

* Tables fit :data:`TABLE_WIDTH` columns unless ``--wide``: ids are shortened (:meth:`Output.
  short`) and the columns a table marks as shrinkable (reasons, tickets, lineage) are cut with
  ``…``. Control characters in cells are shown escaped, so a reason cannot move the cursor.
* Progress goes to stderr, and only for steps that take a while: a status is printed once it
  has been current for :data:`PROGRESS_DELAY` seconds, then repeated with the elapsed time
  every :data:`PROGRESS_EVERY` seconds while nothing new comes. ``-v 0`` silences progress and
  the informational notes on stderr; errors are always printed.
* A reader that stops early (``… | head``) closes stdout: the rest of the output is dropped
  quietly and the command still ends with its own exit code.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import msgspec

_encoder = msgspec.json.Encoder(decimal_format="string")

TABLE_WIDTH = 100
SHORT_ID = 8
MIN_SHRUNK = 6
PROGRESS_DELAY = 2.0
PROGRESS_EVERY = 5.0
_TICK = 0.25
_TABLE_SAMPLE = 500
# ledger.retry's message when live traffic made a write back off and try again.
_URGENT = "retrying in"
# C0 and C1 controls and DEL, shown as \n, \t or \xNN inside table cells and one-line messages.
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """``text`` with control characters escaped and lone surrogates (undecodable bytes of the
    command line) shown as ``\\udcNN``: safe to print on one line of any terminal."""
    text = text.translate(_CONTROLS)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when it was cut."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


class OutputClosed(Exception):
    """The reader closed stdout; raised to stop a stream early (never leaves the command)."""


class Progress:
    """Delayed, rate-limited status lines on stderr (see the module docstring)."""

    def __init__(
        self,
        write,
        *,
        enabled: bool,
        delay: float | None = None,
        every: float | None = None,
        clock=time.monotonic,
    ) -> None:
        self._write = write
        self.enabled = enabled
        self._delay = PROGRESS_DELAY if delay is None else delay
        self._every = PROGRESS_EVERY if every is None else every
        self._clock = clock
        self._lock = threading.Lock()
        self._status: str | None = None
        self._since = 0.0
        self._shown_status: str | None = None
        self._last_print = 0.0
        self._start = clock()
        self.printed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, text: str) -> None:
        """Make ``text`` the current status (printed only if it lasts)."""
        if not self.enabled:
            return
        if _URGENT in text:  # waiting on live traffic: say so at once, it explains the wait
            with self._lock:
                self.printed += 1
            self._emit(printable(text))
            return
        with self._lock:
            self._status = printable(text)
            self._since = self._clock()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="corrections-progress")
            self._thread.daemon = True
            self._thread.start()
        self.tick()

    def clear(self) -> None:
        """No current status any more (another display, a progress bar, takes over)."""
        with self._lock:
            self._status = None

    def tick(self) -> None:
        """Print the current status if it is due (called by the ticker thread)."""
        with self._lock:
            status, now = self._status, self._clock()
            if status is None or now - self._since < self._delay:
                return
            elapsed = now - self._start
            if status != self._shown_status:
                line = f"{status} ({elapsed:.0f} s)"
            elif now - self._last_print >= self._every:
                line = f"  … still {status} ({elapsed:.0f} s)"
            else:
                return
            self._shown_status, self._last_print = status, now
            self.printed += 1
        self._emit(line)

    def _emit(self, line: str) -> None:
        try:
            self._write(line)
        except (OSError, ValueError):  # stderr is gone: stop reporting, keep working
            self.enabled = False

    def _run(self) -> None:
        while not self._stop.wait(_TICK):
            self.tick()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.printed:
            self._emit(f"done in {self._clock() - self._start:.1f} s")


class Output:
    """Where a handler prints: ``line``/``json``/``table`` on stdout, ``note``/``progress`` on
    stderr. ``json`` and ``wide`` say how the user asked for the output."""

    def __init__(
        self,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        *,
        verbosity: int = 1,
        json: bool = False,
        wide: bool = False,
        width: int = TABLE_WIDTH,
    ) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.verbosity = verbosity
        self.json_mode = json
        self.wide = wide
        self.width = width
        self.closed = False
        self._stderr_lock = threading.Lock()
        self.progress = Progress(self._stderr_line, enabled=verbosity >= 1)

    # -- stdout --------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Write ``text`` as is; after the reader went away, drop it and raise OutputClosed."""
        if self.closed:
            raise OutputClosed
        try:
            if hasattr(self.stdout, "style_func"):  # Django's OutputWrapper adds no newline
                self.stdout.write(text, ending="")
            else:
                self.stdout.write(text)
        except BrokenPipeError:
            self._reader_gone()
            raise OutputClosed from None

    def line(self, text: str = "") -> None:
        try:
            self.write(text + "\n")
        except OutputClosed:
            pass

    def json(self, value: Any) -> None:
        self.line(_encoder.encode(value).decode())

    def flush(self) -> None:
        if self.closed:
            return
        try:
            self.stdout.flush()
        except BrokenPipeError:
            self._reader_gone()
        except (AttributeError, ValueError):
            pass

    def _reader_gone(self) -> None:
        """Point the process's stdout at /dev/null so the final flush at exit cannot fail."""
        self.closed = True
        try:
            fd = self.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    # -- stderr --------------------------------------------------------------------------------

    def _stderr_line(self, text: str) -> None:
        with self._stderr_lock:
            self.stderr.write(text + "\n")
            try:
                self.stderr.flush()
            except (AttributeError, ValueError):
                pass

    def note(self, text: str) -> None:
        """An informational line on stderr (a summary, a hint); silenced by ``-v 0``."""
        if self.verbosity >= 1:
            try:
                self._stderr_line(printable(text))
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.progress.close()
        self.flush()

    # -- tables --------------------------------------------------------------------------------

    def short(self, value: Any) -> str:
        """An id as a table shows it: the first 8 characters of a UUID unless ``--wide``
        (every ``--batch`` option takes such a prefix)."""
        if value is None:
            return ""
        text = str(value)
        if self.wide or len(text) != 36:
            return text
        return text[:SHORT_ID]

    def fit(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        shrink: Iterable[str] = (),
    ) -> list[int]:
        """Column widths: each column's widest cell, then — unless ``--wide`` — the shrinkable
        columns narrowed, widest first, until the table fits the width."""
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(v)) for w, v in zip(widths, row, strict=False)]
        if self.wide:
            return widths
        flexible = [i for i, h in enumerate(headers) if h in set(shrink)]
        while True:
            total = sum(widths) + 2 * (len(widths) - 1)
            excess = total - self.width
            if excess <= 0 or not flexible:
                return widths
            i = max(flexible, key=lambda k: widths[k])
            floor = max(MIN_SHRUNK, len(headers[i]))
            if widths[i] <= floor:
                flexible.remove(i)
                continue
            others = sorted((widths[k] for k in flexible if k != i), reverse=True)
            target = max(floor, widths[i] - excess, others[0] if others else floor)
            widths[i] = target if target < widths[i] else widths[i] - 1

    def _format(self, widths: Sequence[int], row: Sequence[str]) -> str:
        cells = [clip(v, w) if not self.wide else v for v, w in zip(row, widths, strict=False)]
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=False)).rstrip()

    def table(
        self,
        headers: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        shrink: Iterable[str] = (),
    ) -> int:
        """Print a table; rows are streamed after the first few hundred fixed the widths.
        Returns the number of rows printed."""
        shrink = tuple(shrink)
        cells: Iterator[list[str]] = (_cells(row) for row in rows)
        sample = list(itertools.islice(cells, _TABLE_SAMPLE))
        widths = self.fit(headers, sample, shrink)
        self.line(self._format(widths, list(headers)))
        self.line(self._format(widths, ["-" * w for w in widths]))
        count = 0
        for row in itertools.chain(sample, cells):
            if self.closed:
                break
            self.line(self._format(widths, row))
            count += 1
        return count

    def pairs(self, rows: Sequence[tuple[str, Any]], indent: str = "  ") -> None:
        """``key  value`` lines, values cut to the width unless ``--wide``."""
        width = max((len(k) for k, _ in rows), default=0)
        room = self.width - len(indent) - width - 2
        for key, value in rows:
            text = printable("" if value is None else str(value))
            if not self.wide:
                text = clip(text, max(room, 20))
            self.line(f"{indent}{key:<{width}}  {text}".rstrip())


def _cells(row: Sequence[Any]) -> list[str]:
    return ["" if v is None else printable(str(v)) for v in row]
