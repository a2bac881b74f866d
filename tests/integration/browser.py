"""A headless Chromium for the status page test: Debian's `chromium` and
`chromium-driver`, installed with apt-get when missing (the test machines run as root
and cannot download browsers from the internet), driven by Selenium.

Every way this can fail to produce a browser ends in `pytest.skip` with the reason, so a
machine without apt (or without root) skips the browser test instead of failing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_S = 600


def _installed() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _apt_install() -> str | None:
    """Install the packages; None on success, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available to install chromium and chromium-driver"
    if os.geteuid() != 0:
        return "not root: cannot apt-get install chromium and chromium-driver"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    for attempt in ([], [["apt-get", "update"]]):  # the package lists may be stale
        try:
            for cmd in [*attempt, install]:
                subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=APT_TIMEOUT_S)
            return None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            problem = getattr(exc, "stderr", b"") or b""
            reason = f"apt-get failed: {problem.decode(errors='replace')[-300:]}"
    return reason


def chromium_paths() -> tuple[str, str]:
    """(browser, driver) paths, installing them first when needed; skips otherwise."""
    found = _installed()
    if found is None:
        problem = _apt_install()
        found = _installed()
        if found is None:
            pytest.skip(problem or "chromium installed but not found on PATH")
    return found


def headless_chromium():  # type: ignore[no-untyped-def]
    """A Selenium WebDriver on the system's headless Chromium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1100,900")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
