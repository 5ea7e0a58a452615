"""Printing for the ``corrections`` command: tables for people, msgspec JSON for machines."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

import msgspec

_encoder = msgspec.json.Encoder(decimal_format="string")


class Output:
    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def json(self, value: Any) -> None:
        self.stdout.write(_encoder.encode(value).decode() + "\n")

    def progress(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        rows = [["" if v is None else str(v) for v in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(v)) for w, v in zip(widths, row, strict=False)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        self.line(fmt.format(*headers).rstrip())
        self.line(fmt.format(*("-" * w for w in widths)).rstrip())
        for row in rows:
            self.line(fmt.format(*row).rstrip())
