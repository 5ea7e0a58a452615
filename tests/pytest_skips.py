"""Skips the suite accounts for: each run ends with its skips counted by reason, and in CI a skip
for want of something CI provides is an error.

Loaded by ``-p tests.pytest_skips`` (``addopts`` in ``pyproject.toml``). Two kinds of skip are
told apart by their exception class, never by their text:

* :func:`skip_unprovided` — a test needs something this kind of machine has or ``.ci/run``
  installs: ``redis-server`` (and django-redis), Debian's chromium and chromedriver (and
  selenium). Locally that is a skip; with ``LEDGER_CI`` set (``.ci/run`` sets it) it is an
  error, so CI cannot pass with those guards left out.
* :func:`skip_without_host_checkout` — a comparison with the real host's source needs a checkout
  of it (``HOST_CHECKOUT``, default ``/work/host``); CI has none, so these skip there too, and
  the summary names the command that runs them. When ``HOST_CHECKOUT`` is set explicitly and
  names no checkout, they fail instead.

Any other skip (``skipif`` on the database in use, on running as root) is counted, never failed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import NoReturn

import pytest

CI = "LEDGER_CI"
HOST_TEST_COMMAND = "make host-test HOST=<checkout>"


class Unprovided(pytest.skip.Exception):
    """A skip for want of something CI provides: an error when ``LEDGER_CI`` is set."""


class NoHostCheckout(pytest.skip.Exception):
    """A skip for want of a checkout of the real host's source."""


def skip_unprovided(what: str, why: str) -> NoReturn:
    raise Unprovided(f"needs {what} ({CI} makes this an error): {why}", allow_module_level=True)


def skip_without_host_checkout(where: os.PathLike | str) -> NoReturn:
    """Skip for want of the host's source; fail when ``HOST_CHECKOUT`` asked for one there."""
    if os.environ.get("HOST_CHECKOUT"):
        pytest.fail(f"HOST_CHECKOUT={where} is not a checkout of the host", pytrace=False)
    raise NoHostCheckout(
        f"no host checkout at {where}: `{HOST_TEST_COMMAND}` runs the comparisons with the "
        "real host (or set HOST_CHECKOUT)",
        allow_module_level=True,
    )


def in_ci() -> bool:
    return os.environ.get(CI, "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        in_ci()
        and report.skipped
        and call.excinfo is not None
        and call.excinfo.errisinstance(Unprovided)
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"{call.excinfo.value.msg}\n{CI} is set: CI installs or provides this, so a skip "
            "here means a guard did not run"
        )


# pytest prefixes a skip's reason with the exception's name ("Skipped: ", or the qualified
# name of a subclass); the summary shows the reason alone.
_SKIP_NAME = re.compile(r"^(?:[\w.]+\.)?(?:Skipped|Unprovided|NoHostCheckout): ")


def _reason(report) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return _SKIP_NAME.sub("", text, count=1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    by_reason = Counter(_reason(r) for r in skipped)
    terminalreporter.section("skips by reason", sep="-")
    if not by_reason:
        terminalreporter.write_line("no test was skipped")
        return
    for reason, count in sorted(by_reason.items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.write_line(f"{count:6d}  {reason}")
