"""Headless Debian chromium through selenium, for the tests that look at a page as a person would."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def require_chrome() -> None:
    """Skip the test when the browser is not installed (.ci/run installs it with apt when it can)."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"Debian chromium/chromium-driver not installed ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs "
                    "them with apt when it can")
    pytest.importorskip("selenium")


def chrome(offline: bool = False, size: str = "1400,1000"):
    """A driver with its own profile (``close`` removes it); ``offline``: every network request goes to a proxy
    that is not there (127.0.0.1:9), so a page shows what it can without the network."""
    require_chrome()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--allow-file-access-from-files", f"--user-data-dir={profile}", f"--window-size={size}"):
        opts.add_argument(flag)
    if offline:
        opts.add_argument("--proxy-server=127.0.0.1:9")
        opts.add_argument("--proxy-bypass-list=<-loopback>")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.profile_dir = profile
    return driver


def close(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)
