"""Browser fixtures: the real gateway on a loopback port, driven by headless Debian Chromium.

Nothing is downloaded: Selenium gets the paths of the Debian ``chromium`` and
``chromium-driver`` binaries, and Selenium Manager is told to stay offline. Tests skip
with a clear message where they are missing (CI installs them with apt).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.helpers import ROOT, wait_until

CHROMIUM = os.environ.get("JOBGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("JOBGATE_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = ROOT / "tests" / "artifacts"
INSTALL_HINT = "apt-get install -y chromium chromium-driver"


class RecordingHandler(logging.Handler):
    """Keeps every formatted log line the server writes, to search it for secrets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class LiveServer:
    """The gateway served over real HTTP; ``log`` holds its request and app log lines."""

    url: str
    log: RecordingHandler


@pytest.fixture(scope="session")
def live_server(app) -> Iterator[LiveServer]:
    """The real app (page, JSON API, SSE) on 127.0.0.1 in a threaded werkzeug server."""
    handler = RecordingHandler()
    logging.getLogger("werkzeug").setLevel(logging.INFO)  # one line per request
    logging.getLogger().addHandler(handler)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-gateway", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", handler)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """One headless Chromium for the session (each test gets a clean tab state)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.skip(
            f"browser tests need Debian Chromium: {', '.join(missing)} not found "
            f"(install with: {INSTALL_HINT})"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser tests need Selenium: pip install 'selenium>=4.20'")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download anything
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tempfile.mkdtemp(prefix="jobgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1100,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Page:
    """A test's view of the browser: the driver, the server and the keys it typed."""

    driver: object
    server: LiveServer
    secrets: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.driver.get(self.server.url + path)

    def element(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> bool:
        return self.element(element_id).is_displayed()

    def text(self, element_id: str) -> str:
        return self.element(element_id).text

    def wait_visible(self, element_id: str, timeout: float = 15.0):
        return wait_until(
            lambda: self.visible(element_id) and self.element(element_id),
            timeout,
            0.05,
            f"#{element_id} to show",
        )

    def sign_in(self, key: str, path: str = "/ui/") -> None:
        """Type ``key`` into the login form, as a user would, and submit it."""
        self.secrets.append(key)
        self.open(path)
        field_ = self.wait_visible("api-key")
        field_.clear()
        field_.send_keys(key)
        self.element("login-submit").click()
        wait_until(
            lambda: self.visible("content") or self.visible("login-error"),
            15,
            0.05,
            "the sign-in to finish",
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        return path

    def console_errors(self) -> list[str]:
        """Script errors and CSP violations (failed 4xx fetches are expected, not errors)."""
        entries = self.driver.get_log("browser")
        return [
            entry["message"]
            for entry in entries
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]


@pytest.fixture
def page(chromium, live_server: LiveServer, request) -> Iterator[Page]:
    """A clean tab (no stored key) and, afterwards, the no-leak checks on every typed key."""
    chromium.get(live_server.url + "/ui/")
    chromium.execute_script("sessionStorage.clear(); localStorage.clear();")
    chromium.delete_all_cookies()
    chromium.get_log("browser")  # drop earlier tests' entries
    first_log_line = len(live_server.log.lines)
    current = Page(chromium, live_server)
    yield current
    try:
        current.screenshot(f"last-{request.node.name}")
    except Exception:  # noqa: BLE001 - a failed screenshot must not hide the test's result
        pass
    log = "\n".join(live_server.log.lines[first_log_line:])
    for key in current.secrets:
        assert key not in chromium.current_url, "an API key leaked into the URL"
        assert key not in log, "an API key leaked into the server log"
        assert all(key not in c["value"] for c in chromium.get_cookies()), "key in a cookie"
        assert not chromium.execute_script("return localStorage.length"), "key in localStorage"
    if current.secrets:
        assert "GET /v1/" in log, "the request log is empty, so the leak check proved nothing"
    errors = current.console_errors()
    assert not errors, f"the page logged errors: {errors}"
