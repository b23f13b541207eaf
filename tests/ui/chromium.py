"""Debian's Chromium and ChromeDriver for the browser tests, installed once when missing
(the ``chromium`` and ``browser`` fixtures are in ``tests/ui/conftest.py``).

CI runs as root on a fresh Debian machine with apt reachable: the test set-up installs
``chromium`` and ``chromium-driver`` itself (no browser download of a test tool's own).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")
# the flags this machine needs (../shared/TOOLING.md): no sandbox as root, no GPU, and
# none of Chromium's background connections, which the closed network refuses
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
)
_LOCK = Path("/tmp/dialer-chromium-install.lock")
BROWSER_TZ = "America/New_York"  # not the server's UTC: times must show in the browser's zone
DESKTOP = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}


def installed() -> bool:
    return Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


def ensure_chromium() -> None:
    if installed():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("Chromium is missing and apt-get is not available to install it: "
                           f"install the Debian packages {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing right now
        if installed():
            return
        cmd = [apt, "install", "-y", "-q", *PACKAGES]
        if subprocess.run(cmd, env=env, capture_output=True, text=True, check=False).returncode != 0:
            subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=True, timeout=300)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"apt-get could not install {' '.join(PACKAGES)}:\n{done.stderr[-3000:]}")
    if not installed():
        raise RuntimeError(f"{CHROMIUM} or {CHROMEDRIVER} still missing after apt-get install")


def until(driver: WebDriver, cond: Callable[[WebDriver], Any], timeout: float = 10, what: str = "") -> Any:
    def safe(d: WebDriver) -> Any:
        try:
            return cond(d)
        except StaleElementReferenceException:  # a live region was swapped under us
            return False
        except WebDriverException as e:
            # the same race as Chromium words it when a navigation (a form's redirect)
            # replaced the document between finding an element and reading it
            if "does not belong to the document" in str(e):
                return False
            raise

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(safe, what)
