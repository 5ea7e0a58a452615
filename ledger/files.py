"""Reading the files an operator hands the ledger: id lists, exclusion lists, exports, anchors.

Every refusal is one line naming the file and the problem, before any work starts: a path that
is not a regular file (a FIFO would hang the command, a directory or device makes no sense), a
file too large, binary content, text that is not UTF-8. ``-`` reads standard input.
"""

from __future__ import annotations

import os
import re
import stat
import sys

from ledger.errors import LedgerError

MAX_BYTES = 256 * 1024 * 1024
MAX_ID = 2**63 - 1  # the host's BigAutoField
_ASCII_DIGITS = re.compile(r"[0-9]+")


def require_regular_file(path: str, what: str) -> None:
    """Refuse a path that is missing, unreadable or not a regular file (FIFOs would hang)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise LedgerError(f"cannot read {what} file {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise LedgerError(f"{what} file {path} is not a regular file")


def read_bytes(path: str, what: str, max_bytes: int = MAX_BYTES) -> bytes:
    if path == "-":
        data = sys.stdin.buffer.read(max_bytes + 1)
    else:
        require_regular_file(path, what)
        try:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as error:
            raise LedgerError(f"cannot read {what} file {path}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise LedgerError(f"{what} file {path} is larger than {max_bytes // 2**20} MiB")
    return data


def read_text(path: str, what: str, max_bytes: int = MAX_BYTES) -> str:
    data = read_bytes(path, what, max_bytes)
    if b"\x00" in data:
        raise LedgerError(f"{what} file {path} is binary, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LedgerError(f"{what} file {path} is not UTF-8 text (byte {error.start})") from None
    return text.removeprefix("\ufeff")


def read_lines(path: str, what: str) -> list[str]:
    """Non-blank lines without ``#`` comments, stripped."""
    lines = []
    for line in read_text(path, what).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def read_ids(path: str, what: str) -> list[int]:
    """Integer ids, one per line, in ASCII digits only (``²`` or ``١٢٣`` are not ids)."""
    lines = read_lines(path, what)
    bad = [line for line in lines if not _ASCII_DIGITS.fullmatch(line)]
    if bad:
        shown = ", ".join(repr(b[:20]) for b in bad[:5])
        raise LedgerError(f"{what} file {path} has entries that are not ids: {shown}")
    ids = []
    for line in lines:
        if len(line) > 19 or int(line) > MAX_ID:
            raise LedgerError(f"{what} file {path} has an id out of range: {line[:20]}…")
        ids.append(int(line))
    return ids
