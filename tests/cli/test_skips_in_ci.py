"""CI cannot pass with a guard skipped: with ``LEDGER_CI`` set, a skip for want of something CI
provides (Redis, the browser) is an error; other skips are counted; every run ends with its
skips by reason, the host comparisons naming the command that runs them (tests/pytest_skips.py).

Each case runs pytest on a small test file in a subprocess, as ``.ci/run`` runs the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .conftest import ROOT

SAMPLE = """
import pytest

from tests.pytest_skips import skip_unprovided, skip_without_host_checkout


@pytest.fixture(scope="session")
def redis():
    skip_unprovided("redis-server", "not on PATH")


def test_needs_redis(redis):
    pass


def test_needs_redis_too(redis):
    pass


def test_needs_the_browser():
    skip_unprovided("Debian's chromium and chromedriver", "/usr/bin/chromium is missing")


def test_compares_with_the_host():
    skip_without_host_checkout("/nowhere")


@pytest.mark.skipif(True, reason="not on the embedded server")
def test_elsewhere():
    pass


def test_runs():
    pass
"""


def _pytest(tmp_path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    environ = {k: v for k, v in os.environ.items() if k not in ("LEDGER_CI", "HOST_CHECKOUT")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.pytest_skips", "-p", "no:django",
         "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(tmp_path),
         "test_sample.py"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _summary(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "skips by reason" in line)
    return [line.strip() for line in lines[start + 1 :] if line[:6].strip().isdigit()]


def test_outside_ci_everything_skips_and_the_run_lists_skips_by_reason(tmp_path):
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 5 skipped" in done.stdout
    assert _summary(done.stdout) == [
        "2  needs redis-server (LEDGER_CI makes this an error): not on PATH",
        "1  needs Debian's chromium and chromedriver (LEDGER_CI makes this an error): "
        "/usr/bin/chromium is missing",
        "1  no host checkout at /nowhere: `make host-test HOST=<checkout>` runs the "
        "comparisons with the real host (or set HOST_CHECKOUT)",
        "1  not on the embedded server",
    ]


def test_in_ci_a_skip_for_want_of_what_ci_provides_is_an_error(tmp_path):
    done = _pytest(tmp_path, LEDGER_CI="1")
    assert done.returncode == 1, done.stdout
    # The fixture's skip fails both tests' setup (errors), the browser's the test itself.
    assert "1 failed, 1 passed, 2 skipped, 2 errors" in done.stdout
    assert "LEDGER_CI is set: CI installs or provides this" in done.stdout
    assert _summary(done.stdout) == [
        "1  no host checkout at /nowhere: `make host-test HOST=<checkout>` runs the "
        "comparisons with the real host (or set HOST_CHECKOUT)",
        "1  not on the embedded server",
    ]


def test_a_named_host_checkout_that_is_missing_fails(tmp_path):
    done = _pytest(tmp_path, HOST_CHECKOUT="/nowhere")
    assert done.returncode == 1
    assert "HOST_CHECKOUT=/nowhere is not a checkout of the host" in done.stdout


def test_ci_fails_when_it_cannot_install_what_the_guards_need(tmp_path):
    """Without redis-server and no way to install it, .ci/run stops before any run (it used to
    print "will skip" and go on). A copy runs, so nothing of this checkout is touched."""
    (tmp_path / ".ci").mkdir()
    script = tmp_path / ".ci" / "run"
    script.write_bytes((ROOT / ".ci" / "run").read_bytes())
    script.chmod(0o755)
    tools = tmp_path / "bin"  # a PATH with the basics and neither redis-server nor apt-get
    tools.mkdir()
    for name in ("bash", "dirname", "id"):
        (tools / name).symlink_to(shutil.which(name))
    done = subprocess.run(
        [str(tools / "bash"), str(script)],
        env={"PATH": str(tools), "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert ".ci/run: cannot install redis-server" in done.stderr
    assert "will skip" not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ci", "bin"]  # nothing ran
