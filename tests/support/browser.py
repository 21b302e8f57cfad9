"""Headless Chromium for the tests that look at pages (tests/integration/test_report.py,
tests/integration/test_serve_page.py): Debian's chromium + chromium-driver (tests/tools/install.sh), driven by Selenium
with the driver's path given explicitly, so Selenium's own driver manager never tries the network. Screenshots go to one
folder per test module, JOB_TEST_ARTIFACTS when it is set (CI keeps it), printed at the start otherwise.

    @pytest.fixture(scope="module")
    def browser():
        with chromium() as driver:
            yield driver
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WINDOW = (1400, 1000)


def artifacts_folder(tmp_path_factory, name: str) -> Path:
    """Where a module's screenshots are kept: $JOB_TEST_ARTIFACTS, or a pytest temp folder called `name`."""
    folder = Path(os.environ.get("JOB_TEST_ARTIFACTS") or tmp_path_factory.mktemp(name))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the pages go to {folder}")
    return folder


@contextlib.contextmanager
def chromium() -> Iterator:
    """A headless Chromium WebDriver that records the network requests (performance log) and the console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: run tests/tools/install.sh (apt-get install chromium "
                    f"chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the driver named: no download
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """The URLs the page requested since the performance log was last read (reading it empties it)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_problems(driver) -> list[str]:
    """Console errors and warnings since the browser log was last read, e.g. a Content-Security-Policy violation."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def full_page_screenshot(driver, path: Path, width: int = WINDOW[0]) -> None:
    """The whole page, not only the window: the window is made as tall as the page first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height + 120, 16000))
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
