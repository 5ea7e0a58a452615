"""A real headless browser on the admin: Debian's chromium driven by selenium.

The server is Django's live-server thread with *no* static-files handler of its own and
``DEBUG`` off (as pytest-django sets it), so the admin's CSS reaches the browser the way it
does in the standalone project: through WhiteNoise. Each test runs on a transactional database
the server thread can see; screenshots go to ``build/screenshots/`` for review.

Tests skip, saying why, when chromium, chromedriver or selenium is missing — an error in CI
(``LEDGER_CI``), where ``.ci/run`` installs them: ``apt-get install chromium chromium-driver``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pytest_skips import skip_unprovided

CHROMIUM = os.environ.get("LEDGER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LEDGER_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
WINDOW = (1440, 900)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
PASSWORD = "correct horse battery staple"


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements/dev.txt)"
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """One headless chromium for the session, with a fresh profile."""
    why = _missing()
    if why:
        skip_unprovided("Debian's chromium and chromedriver", why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ledger-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    _size(driver, *WINDOW)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_server(django_db_setup, django_db_blocker) -> Iterator[str]:
    """The project's WSGI application on a live-server thread, static files left to it."""
    from django.test.testcases import LiveServerThread

    with django_db_blocker.unblock():
        thread = LiveServerThread(
            "localhost", static_handler=lambda handler: handler, connections_override={}, port=0
        )
        thread.daemon = True
        thread.start()
        thread.is_ready.wait()
        if thread.error:
            raise thread.error
    try:
        yield f"http://localhost:{thread.port}"
    finally:
        thread.terminate()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def _size(driver, width: int, height: int) -> None:
    """Make the page's viewport (not the window around it) ``width`` × ``height``."""
    driver.set_window_size(width, height)
    extra = driver.execute_script(
        "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]"
    )
    if any(extra):
        driver.set_window_size(width + max(extra[0], 0), height + max(extra[1], 0))


class Browser:
    """The driver, the server's address, and the few steps every test takes."""

    def __init__(self, driver, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    def get(self, path: str):
        self.driver.get(self.base + path)
        return self.driver

    def login(self, username: str, password: str = PASSWORD) -> None:
        from selenium.webdriver.common.by import By

        self.driver.delete_all_cookies()
        self.get("/admin/login/?next=/admin/")
        self.driver.find_element(By.ID, "id_username").send_keys(username)
        self.driver.find_element(By.ID, "id_password").send_keys(password)
        self.follow(self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]"))
        assert self.driver.find_elements(By.ID, "user-tools"), self.driver.page_source[:500]

    def follow(self, element, *, submit: bool = False):
        """Click ``element`` (or submit its form) and wait until the next page has replaced it.

        Selenium returns from a click as soon as the browser has the event, not when the page
        it leads to has loaded; reading the page straight after would read the old one.
        """
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        page = self.driver.find_element(By.TAG_NAME, "html")
        if submit:
            element.submit()
        else:
            element.click()
        WebDriverWait(self.driver, 15).until(expected_conditions.staleness_of(page))
        WebDriverWait(self.driver, 15).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        return self.driver

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def shot(self, name: str, *, full: bool = False) -> Path:
        """Save a PNG of the window, or of the whole page when ``full``."""
        path = self.shots / f"{name}.png"
        width, height = WINDOW
        if full:
            height = max(
                height,
                min(8000, self.driver.execute_script("return document.body.scrollHeight") + 20),
            )
        _size(self.driver, width, height)
        try:
            self.driver.save_screenshot(str(path))
        finally:
            _size(self.driver, *WINDOW)
        return path


@pytest.fixture
def browser(chromium, admin_server, screenshots, transactional_db) -> Browser:
    chromium.delete_all_cookies()
    return Browser(chromium, admin_server, screenshots)
