"""
The pages in a real browser: headless Chromium, driven through Debian's
``chromedriver`` with Selenium, against a real daemon building the
offline package set.

Selenium rather than the DevTools protocol: Debian ships a chromedriver
matched to its Chromium, and WebDriver gives the page's rendered text,
waits, screenshots and the browser's console log through a typed API;
DevTools would need a WebSocket client this project does not otherwise
use, and protocol plumbing of our own.

The waits below poll the browser (a separate process) with a deadline:
there is no event to wait for across that boundary.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.daemon import Daemon
from tests.e2e import fresh_package_set, require_root, require_tools, run

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

T = TypeVar("T")

#: Chromium's flags for a headless run as root in a container.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1200,1400")
#: The phases of a build that has ended.
FINISHED = ("succeeded", "failed", "cancelled")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll ``probe`` until it returns something, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(0.05)


def ticker_lines(text: str) -> list[int]:
    """The numbers of the ticker's lines in a log, in order."""
    return [int(n) for n in re.findall(r"^ticker: line (\d+)$", text, re.MULTILINE)]


class PagesBrowserEndToEnd(SynchronousTestCase):
    """Headless Chromium reads the front page and follows a build live."""

    def setUp(self) -> None:
        require_root()
        tools = require_tools("nix-build", "chromium", "chromedriver")
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise SkipTest("selenium is not installed (dev/setup installs it)") from None
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.daemon = Daemon(self.workdir, "--pkgs-path", fresh_package_set(self.workdir))
        self.addCleanup(self.daemon.stop)
        self.daemon.start()
        self.browser = self.start_browser(tools["chromium"], tools["chromedriver"])

    def start_browser(self, chromium: str, chromedriver: str) -> WebDriver:
        """Chromium with a fresh profile in the test's directory, quit at cleanup."""
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument("--user-data-dir=" + os.path.join(self.workdir, "profile"))
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=chromedriver,
                          log_output=os.path.join(self.workdir, "chromedriver.log"))
        driver = webdriver.Chrome(options=options, service=service)
        self.addCleanup(driver.quit)
        driver.set_page_load_timeout(20)
        return driver

    def text_of(self, element_id: str) -> str:
        """The rendered text of the element with ``element_id``."""
        from selenium.webdriver.common.by import By

        text = self.browser.find_element(By.ID, element_id).get_attribute("textContent")
        return text or ""

    def policy_violations(self) -> list[str]:
        """Messages of the browser's console about the content security policy."""
        entries = self.browser.get_log("browser")
        return [e["message"] for e in entries if "Content Security Policy" in e["message"]]

    def test_build_log_live(self) -> None:
        """
        A running build is listed on ``/``; its page shows log lines while
        the build still runs, later lines arrive without a reload, and the
        final state and layers show when it ends.
        """
        from selenium.webdriver.common.by import By

        started = time.monotonic()
        browser = self.browser
        browser.get(self.daemon.url("/"))
        self.assertEqual(browser.title, "nixeryd")
        self.assertIn("none", self.text_of("running").lower())

        pulled: list[tuple[int, dict[str, str], bytes]] = []
        pull = threading.Thread(
            target=lambda: pulled.append(self.daemon.request("/v2/ticker/manifests/latest")))
        pull.start()
        self.addCleanup(pull.join, 120)

        def running_link() -> str | None:
            browser.refresh()
            for link in browser.find_elements(By.CSS_SELECTOR, "#running a"):
                if link.text == "ticker:latest":
                    return link.get_attribute("href")
            return None

        page = wait_for("the ticker build on /", running_link, 20)
        self.assertRegex(page, r"/builds/[0-9a-f]+$")
        browser.get(page)
        # A mark in the page's window: gone if the page were loaded again.
        browser.execute_script("window.nixerydMark = 1;")

        first = wait_for("a first ticker line", lambda: ticker_lines(self.text_of("log")), 20)
        self.assertNotIn(self.text_of("phase"), FINISHED)
        duration = self.text_of("duration")
        self.assertTrue(duration.endswith(" so far"), duration)
        more = wait_for("three more lines", lambda: (
            lines if len(lines := ticker_lines(self.text_of("log"))) >= len(first) + 3
            else None), 10)
        # Seen while the build still runs: the ticker has lines left to print.
        self.assertNotIn(self.text_of("phase"), FINISHED)
        self.assertLess(more[-1], 16)
        wait_for("the duration to grow", lambda: self.text_of("duration") != duration, 3)
        browser.save_screenshot(os.path.join(self.workdir, "build-running.png"))

        wait_for("the build's end", lambda: self.text_of("phase") in FINISHED, 30)
        self.assertEqual(self.text_of("phase"), "succeeded")
        self.assertEqual(browser.execute_script("return window.nixerydMark;"), 1)
        self.assertEqual(ticker_lines(self.text_of("log")), list(range(1, 17)))
        self.assertRegex(self.text_of("digest"), r"^sha256:[0-9a-f]{64}$")
        self.assertRegex(self.text_of("layer-summary"), r"^\d+ layers?, [\d.]+ \w?i?B in all")
        self.assertTrue(self.text_of("layers").strip())
        self.assertNotIn("so far", self.text_of("duration"))
        self.assertEqual(self.policy_violations(), [])
        browser.save_screenshot(os.path.join(self.workdir, "build-page.png"))

        pull.join(60)
        [(status, _, _)] = pulled
        self.assertEqual(status, 200)
        # The page reloaded shows the same, without its script.
        browser.get(page)
        self.assertEqual(self.text_of("phase"), "succeeded")
        self.assertEqual(ticker_lines(self.text_of("log")), list(range(1, 17)))
        browser.get(self.daemon.url("/"))
        self.assertIn("ticker:latest", self.text_of("recent"))
        browser.save_screenshot(os.path.join(self.workdir, "front-page.png"))
        self.assertLess(time.monotonic() - started, 40)

    def test_front_page_command_works_as_shown(self) -> None:
        """The skopeo command shown on ``/`` runs as it is shown."""
        require_tools("skopeo")
        self.browser.get(self.daemon.url("/"))
        commands = self.text_of("pull").splitlines()
        [skopeo] = [c for c in commands if c.startswith("skopeo ")]
        self.assertEqual(skopeo, "skopeo inspect --tls-verify=false docker://%s/shell/hello"
                         % (self.daemon.address,))
        inspected = run(shlex.split(skopeo), timeout=120)
        self.assertIn('"Architecture": "amd64"', inspected.stdout)
        self.assertIn(self.daemon.address, self.text_of("docker-config"))
