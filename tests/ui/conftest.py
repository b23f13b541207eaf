"""Fixtures for the console: the app in-process (httpx + ASGI), a logged-in client, and a
real headless Chromium (Debian's, driven by Selenium) for the browser tests."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from tests.conftest import TOKEN
from tests.ui.chromium import BROWSER_TZ, CHROMEDRIVER, CHROMIUM, DESKTOP, FLAGS, ensure_chromium

BASE = "http://testserver"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def table(html: str, target: str) -> dict[str, tuple[str, str]]:
    m = re.search(rf'<table class="waiting" data-waiting="{target}".*?</table>', html, re.S)
    assert m, target
    rows = re.findall(r'<tr data-reason="([a-z_]+)">.*?<td class="num">([^<]+)</td><td>(.*?)</td></tr>',
                      m.group(0), re.S)
    return {r: (n, re.sub(r"<[^>]+>", "", c)) for r, n, c in rows}


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no CSRF field on the page"
    return m.group(1)


@pytest.fixture
def ui_app(pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(AppContext(settings=settings, pool=pool, clock=clock))


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app with no database behind it: enough for everything refused before a session is
    found (a genuine session cookie is looked up in the database: ``ui.logouts``)."""
    env = {"DIALER_STATE_DIR": str(tmp_path_factory.mktemp("ui") / "var"), "DIALER_API_TOKENS": TOKEN,
           "DIALER_CALLBACK_SECRET": "test-callback-secret", "DIALER_DATABASE_URL": "postgresql://nowhere/x"}
    pool: Any = None
    return create_app(AppContext(settings=load_settings(None, environ=env), pool=pool, clock=FakeClock()))


@pytest.fixture
async def bare(bare_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare_app), base_url=BASE,
                                 follow_redirects=False) as c:
        yield c


@pytest.fixture
def make_client(ui_app: FastAPI) -> Callable[..., httpx.AsyncClient]:
    def make(app: FastAPI | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app or ui_app), base_url=BASE,
                                 follow_redirects=False)

    return make


@pytest.fixture
async def anon(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


async def log_in(c: httpx.AsyncClient, token: str = TOKEN, next_: str | None = None) -> httpx.Response:
    page = await c.get("/ui/login", params={"next": next_} if next_ else None)
    assert page.status_code == 200, page.text
    return await c.post("/ui/login", data={"csrf": csrf_of(page.text), "token": token,
                                           "next": next_ or "/ui/"})


class Console:
    """A logged-in client and the CSRF token of its session."""

    def __init__(self, client: httpx.AsyncClient, csrf: str) -> None:
        self.c = client
        self.csrf = csrf

    async def post(self, path: str, data: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return await self.c.post(path, data={"csrf": self.csrf, **(data or {})}, **kw)


@pytest.fixture
async def console(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[Console]:
    async with make_client() as c:
        r = await log_in(c)
        assert r.status_code == 303, r.text
        page = await c.get("/ui/batches")
        assert page.status_code == 200
        yield Console(c, csrf_of(page.text))


@pytest.fixture(scope="session")
def chromium() -> str:
    ensure_chromium()
    return CHROMIUM


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[WebDriver]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    opts.add_argument("--window-size=1280,800")
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
    })
    # a browser in another zone than the server's UTC: times must show in the browser's zone
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"),
                      env={**os.environ, "TZ": BROWSER_TZ})
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)  # exactly 1280x800
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
