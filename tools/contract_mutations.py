"""Does the contract suite catch a host whose accrual rules changed? Break them and see.

Usage: python tools/contract_mutations.py [NAME …]

For each mutation below (all of them without arguments), a copy of the stand-in's
``commcare_connect`` package is made in a temporary folder, one rule of its accrual module
(``opportunity/utils/completed_work.py``) is broken, and the contract suite
(``pytest --pyargs ledger.contract``) runs in a subprocess against that copy, on a test
database of its own. A control run on an unbroken copy must pass; every broken copy must fail,
and fail in the money table (``test_money_table.py``), not only elsewhere.

Prints one line per run and exits non-zero when the control fails or a mutation survives.
The database is the one the project's settings name (``DATABASE_URL`` or the embedded server
of this checkout); each run uses ``test_contract_mutation_<name>``, made afresh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCRUAL = Path("commcare_connect/opportunity/utils/completed_work.py")


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    edits: tuple[tuple[str, str], ...]  # (text that must occur exactly once, its replacement)


MUTATIONS = (
    Mutation(
        "optional-ignored",
        "optional deliver units ignored (neither counted nor required)",
        (
            (
                "(self.optional if optional else self.required)[pu_id].append(du_id)",
                "optional or self.required[pu_id].append(du_id)",
            ),
        ),
    ),
    Mutation(
        "usd-at-rate-1",
        "USD figures at a rate of 1 whatever the currency",
        (("rate = rate_of(work.status_modified_date)", "rate = 1"),),
    ),
    Mutation(
        "no-org-pay",
        "no organisation pay",
        (("org_pay = approved * org_amount", "org_pay = 0"),),
    ),
    Mutation(
        "child-caps-ignored",
        "child payment units do not cap their parent",
        (
            ("kids = self.batch_children.get(unit)", "kids = None"),
            ("kids = self.children.get(unit)", "kids = None"),
        ),
    ),
)


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: int
    failed: int
    table_failed: int  # failures among the money table's tests
    seconds: float
    error: str = ""

    @property
    def suite_failed(self) -> bool:
        return bool(self.failed) or bool(self.error)


def _copy(mutation: Mutation | None, into: Path) -> None:
    shutil.copytree(
        ROOT / "commcare_connect",
        into / "commcare_connect",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if mutation is None:
        return
    path = into / ACCRUAL
    text = path.read_text()
    for old, new in mutation.edits:
        found = text.count(old)
        if found != 1:
            raise SystemExit(
                f"{mutation.name}: {old!r} occurs {found} times in {ACCRUAL}, not once; "
                "update the mutation to the accrual module's code"
            )
        text = text.replace(old, new)
    path.write_text(text)


def _environment(src: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DJANGO_SETTINGS_MODULE"] = "commcare_connect.settings_test"
    env["DATABASE_NAME"] = f"contract_mutation_{name.replace('-', '_')}"
    # The copy would otherwise start an embedded server of its own in the temporary folder.
    env.setdefault("EMBEDDED_PG_DATA", str(ROOT / ".pgdata"))
    return env


def run(mutation: Mutation | None) -> Outcome:
    """The contract suite against a copy of the stand-in, broken by ``mutation`` (or not)."""
    name = mutation.name if mutation else "control"
    with tempfile.TemporaryDirectory(prefix=f"contract-{name}-") as folder:
        work = Path(folder)
        src = work / "src"
        _copy(mutation, src)
        env = _environment(src, name)
        where = subprocess.run(
            [sys.executable, "-c",
             "import importlib.util as u; print(u.find_spec('commcare_connect').origin)"],
            cwd=work, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not where.startswith(str(src)):
            raise SystemExit(f"{name}: the suite would import commcare_connect from {where}")
        report = work / "junit.xml"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--pyargs", "ledger.contract", "-q",
             "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(work), "--create-db",
             f"--junitxml={report}"],
            cwd=work, env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        seconds = time.monotonic() - started
        if not report.exists():
            return Outcome(name, 0, 0, 0, seconds, error=(done.stdout + done.stderr)[-2000:])
        passed = failed = table_failed = 0
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                table_failed += "test_money_table" in case.get("classname", "")
            elif case.find("skipped") is None:
                passed += 1
        error = ""
        if done.returncode not in (0, 1):  # 1: tests failed; anything else: the run broke
            error = f"pytest exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}"
        return Outcome(name, passed, failed, table_failed, seconds, error)


def main(names: list[str]) -> int:
    unknown = set(names) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutations: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    problems = []
    control = run(None)
    print(f"control: {control.passed} passed, {control.failed} failed ({control.seconds:.0f} s)")
    if control.suite_failed or not control.passed:
        problems.append(f"the control run must pass: {control.error or control.failed}")
    for mutation in chosen:
        outcome = run(mutation)
        print(
            f"{mutation.name} ({mutation.what}): {outcome.failed} failed, of which "
            f"{outcome.table_failed} in the money table; {outcome.passed} passed "
            f"({outcome.seconds:.0f} s)"
        )
        if outcome.error:
            problems.append(f"{mutation.name}: {outcome.error}")
        elif not outcome.table_failed:
            problems.append(f"{mutation.name}: the money table did not catch it")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
