"""The console end to end in a real headless Chromium, against a real daemon in sandbox mode.

Logs in with the token the daemon printed, uploads examples/leads.csv, watches the batch
dial to its end with no page reload, downloads results.xlsx and reads it with openpyxl,
pauses and resumes the target, uses the do-not-call list, and looks at the pages at phone
width. A full-page screenshot of every page lands in ``<tmp_path>/screenshots`` (and in
``$DIALER_UI_SCREENSHOTS`` when that is set) for a reviewer.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openpyxl
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select

from dialer.lifecycle.states import TERMINAL
from tests.conftest import DaemonProcess, wait_for
from tests.ui.chromium import DESKTOP, PHONE, until

ROOT = Path(__file__).resolve().parents[2]
LEADS = ROOT / "examples" / "leads.csv"
ENDED = {s.value for s in TERMINAL}

# Every control on every page must have a label (or an aria-label/labelledby).
UNLABELLED_JS = """
return Array.from(document.querySelectorAll('input, select, textarea, button')).filter(function (e) {
  if (e.type === 'hidden') return false;
  if (e.tagName === 'BUTTON') return !(e.textContent.trim() || e.getAttribute('aria-label'));
  if (e.getAttribute('aria-label') || e.getAttribute('aria-labelledby')) return false;
  if (e.closest('label')) return false;
  return !(e.id && document.querySelector('label[for="' + e.id + '"]'));
}).map(function (e) { return e.outerHTML.slice(0, 120); });
"""


@pytest.fixture
def sandbox_daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    """The daemon as `make run` starts it: sandbox mode, no DIALER_API_TOKENS (it prints one)."""
    config = tmp_path / "dialer.toml"
    config.write_text("[sandbox]\ntime_scale = 0.01\n")
    env = {k: v for k, v in daemon_env.items() if k != "DIALER_API_TOKENS"}
    env["DIALER_CONFIG"] = str(config)
    d = DaemonProcess(env, tmp_path)
    d.start()
    match = wait_for(lambda: re.search(r"sandbox mode: API token is (\S+)", d.log.read_text()), 10,
                     "the printed sandbox token")
    try:
        yield d, match.group(1)
    finally:
        if d.stop() != 0:
            print(d.log.read_text()[-4000:])


class Shots:
    def __init__(self, driver: WebDriver, folder: Path) -> None:
        self.driver = driver
        self.folder = folder
        self.n = 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        """A full-page PNG (not only the viewport), through the DevTools protocol."""
        self.n += 1
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width = self.driver.execute_script("return document.documentElement.clientWidth")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(size["height"], 6000), "scale": 1},
        })
        path = self.folder / f"{self.n:02d}-{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def assert_accessible(driver: WebDriver) -> None:
    assert driver.execute_script(UNLABELLED_JS) == [], driver.current_url
    assert driver.find_element(By.CSS_SELECTOR, "html").get_attribute("lang") == "en"
    assert driver.find_elements(By.CSS_SELECTOR, "h1")


WIDER_THAN_SCREEN_JS = """
var w = document.documentElement.clientWidth, out = [];
document.querySelectorAll('body *').forEach(function (e) {
  var r = e.getBoundingClientRect();
  if (r.right > w + 1 && !(e.parentElement && e.parentElement.getBoundingClientRect().right > w + 1)) {
    out.push(e.tagName + '.' + e.className + ' ' + Math.round(r.right) + 'px');
  }
});
return out.slice(0, 10);
"""


def assert_fits_the_screen(driver: WebDriver) -> None:
    """Nothing sticks out sideways (tables scroll inside their own region, if at all)."""
    wide = driver.execute_script(
        "return document.documentElement.scrollWidth > document.documentElement.clientWidth + 1")
    assert not wide, f"{driver.current_url} scrolls sideways: {driver.execute_script(WIDER_THAN_SCREEN_JS)}"


def test_console_end_to_end(sandbox_daemon: tuple[DaemonProcess, str], browser: WebDriver,
                            tmp_path: Path) -> None:
    daemon, token = sandbox_daemon
    d = browser
    shot = Shots(d, tmp_path / "screenshots")
    started = time.monotonic()
    try:
        _walk_through(daemon, token, d, shot, tmp_path)
    finally:
        with contextlib.suppress(Exception):  # never hide the failure behind a screenshot error
            shot("final-state")
        copy_to = os.environ.get("DIALER_UI_SCREENSHOTS")
        if copy_to:
            shutil.copytree(shot.folder, copy_to, dirs_exist_ok=True)
        print(f"\nscreenshots: {shot.folder} ({time.monotonic() - started:.1f}s in the browser)")


def _walk_through(daemon: DaemonProcess, token: str, d: WebDriver, shot: Shots, tmp_path: Path) -> None:
    # -- / → the login page; log in with the keyboard only, with the printed sandbox token
    d.get(daemon.url + "/")
    until(d, EC.url_contains("/ui/login"), what="redirect to the login page")
    assert_accessible(d)
    shot("login")
    field = d.find_element(By.ID, "token")
    assert d.switch_to.active_element == field  # autofocus: type straight away
    field.send_keys("wrong-token" + Keys.ENTER)
    until(d, lambda x: "not one of this daemon" in x.page_source, what="wrong token refused")
    d.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
    until(d, lambda x: x.current_url.rstrip("/").endswith("/ui"), what="logged in")
    cookie = d.get_cookie("dialer_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie.get("expiry")
    assert "No batches yet" in d.page_source and "inbox" in text_of(d, "main")
    assert_accessible(d)
    shot("batches-empty")

    # -- upload examples/leads.csv
    d.find_element(By.LINK_TEXT, "Upload").click()
    until(d, EC.url_contains("/ui/upload"))
    assert_accessible(d)
    Select(d.find_element(By.ID, "target")).select_by_value("sales")
    # a file dropped on the page lands in the form's file input
    dropped = d.execute_script("""
        var dt = new DataTransfer();
        dt.items.add(new File(['number\\n+14155550100\\n'], 'dropped.csv', {type: 'text/csv'}));
        var zone = document.querySelector('[data-dropzone]');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
        var over = zone.classList.contains('over');
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        return [over, document.getElementById('file').files[0].name];
    """)
    assert dropped == [True, "dropped.csv"]
    assert "Chosen: dropped.csv" in text_of(d, "[data-file-name]")
    d.find_element(By.ID, "file").send_keys(str(LEADS))
    until(d, lambda x: "Chosen: leads.csv" in text_of(x, "[data-file-name]"), what="chosen file shown")
    shot("upload")
    d.find_element(By.CSS_SELECTOR, "form[data-upload] button[type=submit]").click()
    until(d, lambda x: re.search(r"/ui/batches/[0-9a-f-]{36}", x.current_url), 20, "the batch page")
    batch_url = d.current_url.split("?")[0]
    page = text_of(d, "main")
    assert "leads.csv was received" in page
    assert "unknown agent(s) dave" in page and "12345" in page  # the report's rejected rows
    d.execute_script("window.__sameDocument = 'yes';")
    # times: the browser's zone as text, the UTC instant on hover
    received = d.find_element(By.CSS_SELECTOR, "#summary time")
    assert re.search(r"E[SD]T|GMT-[45]", received.text), received.text
    assert received.get_attribute("title").startswith("UTC: ") and received.get_attribute("datetime").endswith("Z")
    assert_accessible(d)
    shot("batch-dialing")

    # -- the batch dials to its end against the sandbox, with no page reload
    until(d, lambda x: text_of(x, "#batch-state") == "done", 45, "the batch to end (live updates)")
    assert d.execute_script("return window.__sameDocument") == "yes", "the page was reloaded"
    summary = text_of(d, "#summary")
    assert "11 of 11 calls ended (100%)" in summary, summary
    assert d.find_elements(By.CSS_SELECTOR, "#summary svg.chart")
    until(d, lambda x: "waiting" not in text_of(x, "#calls-live") and "queued" not in text_of(x, "#calls-live"),
          10, "the calls table to show every call ended")
    shot("batch-done")

    # -- results.xlsx: one row per lead of the file
    downloads = tmp_path / "downloads"
    d.find_element(By.LINK_TEXT, "results.xlsx").click()
    xlsx = downloads / "leads.csv.results.xlsx"
    wait_for(lambda: xlsx.exists() and not list(downloads.glob("*.crdownload")), 20, "results.xlsx download")
    ws = openpyxl.load_workbook(xlsx, read_only=True).active
    assert ws is not None
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0][:6] == ("number", "external_id", "state", "outcome", "attempts", "agent")
    leads = LEADS.read_text().splitlines()[1:]
    assert len(rows) - 1 == len(leads) == 15
    by_number = {r[0]: r for r in rows[1:]}
    assert by_number["+14155550101"][1] == "crm-1002"  # typed "(415) 555-0101"
    assert by_number["12345"][2] == "invalid"
    dialed = [r for r in rows[1:] if r[2] not in ("invalid", "duplicate", "dnc")]
    assert len(dialed) == 11 and all(r[2] in ENDED and r[6] is not None for r in dialed)

    # -- the batches page shows it done, with its progress bar
    d.find_element(By.LINK_TEXT, "Batches").click()
    until(d, lambda x: "upload · leads.csv" in text_of(x, "main"))
    assert "done" in text_of(d, "#batches-live tbody")
    assert d.find_elements(By.CSS_SELECTOR, "#batches-live svg.bar rect.g-answered, #batches-live svg.bar rect.g-not_reached")
    assert_accessible(d)
    shot("batches")

    # -- targets: pause, then resume (and the API agrees)
    d.find_element(By.LINK_TEXT, "Targets").click()
    until(d, EC.url_contains("/ui/targets"))
    assert_accessible(d)
    shot("targets")
    api = httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    d.find_element(By.CSS_SELECTOR, "button[data-action=pause]").click()
    until(d, lambda x: "Target sales paused." in text_of(x, "main"), what="paused")
    assert text_of(d, "[data-target-status]").startswith("paused")
    assert api.get("/v1/targets").json()["targets"][0]["paused"] is True
    shot("targets-paused")
    d.find_element(By.CSS_SELECTOR, "button[data-action=resume]").click()
    until(d, lambda x: "Target sales resumed." in text_of(x, "main"), what="resumed")
    assert text_of(d, "[data-target-status]") == "running"
    assert api.get("/v1/targets").json()["targets"][0]["paused"] is False

    # -- do-not-call: add (as typed), search, remove
    d.find_element(By.LINK_TEXT, "Do-not-call").click()
    until(d, EC.url_contains("/ui/dnc"))
    assert "The list is empty" in text_of(d, "main")
    assert_accessible(d)
    d.find_element(By.ID, "numbers").send_keys("(415) 555-0199\n+44 20 7946 0019\nnot a number")
    d.find_element(By.CSS_SELECTOR, "form[action='/ui/dnc'] button[type=submit]").click()
    until(d, lambda x: "2 added" in text_of(x, "main"), what="numbers added")
    assert "not a number" in text_of(d, "main")
    shot("dnc")
    search = d.find_element(By.ID, "dnc-q")
    search.send_keys("0199" + Keys.ENTER)
    until(d, lambda x: "q=0199" in x.current_url)
    assert "+14155550199" in text_of(d, "main") and "+442079460019" not in text_of(d, "main")
    d.find_element(By.CSS_SELECTOR, "button[aria-label='Remove +14155550199']").click()
    until(d, EC.alert_is_present(), what="the confirmation").accept()
    until(d, lambda x: "+14155550199 was removed" in text_of(x, "main"), what="number removed")
    assert api.delete("/v1/dnc/+442079460019").status_code == 204

    # -- phone width (a phone's viewport, not a narrow desktop window): nothing wider than the screen
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    d.get(batch_url)
    until(d, lambda x: text_of(x, "#batch-state") == "done")
    assert_fits_the_screen(d)
    shot("batch-phone")
    d.get(daemon.url + "/ui/batches")
    assert_fits_the_screen(d)
    shot("batches-phone")
    d.get(daemon.url + "/ui/targets")
    assert_fits_the_screen(d)
    shot("targets-phone")
    d.get(daemon.url + "/ui/upload")
    assert_fits_the_screen(d)
    shot("upload-phone")
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)

    # -- log out: the session is gone
    d.get(daemon.url + "/ui/batches")
    d.find_element(By.CSS_SELECTOR, "form.logout button").click()
    until(d, lambda x: "You have logged out." in x.page_source, what="logged out")
    d.get(daemon.url + "/ui/batches")
    until(d, EC.url_contains("/ui/login"), what="refused after logout")
