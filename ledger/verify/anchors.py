"""``anchors``: the ledger against signed chain heads kept outside the database."""

from __future__ import annotations

from ledger import anchors
from ledger.verify.common import Problem, Result


def check_anchors(path: str) -> Result:
    items = anchors.read(path)
    found, note = anchors.check(items)
    problems = [
        Problem(check="anchors", message=f"{path}, line {p.line}: {p.message}") for p in found
    ]
    return len(items), len(problems), problems, note
