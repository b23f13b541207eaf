"""Fixtures for the console: the app in-process (httpx + ASGI), and a logged-in client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from tests.conftest import TOKEN

BASE = "http://testserver"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no CSRF field on the page"
    return m.group(1)


@pytest.fixture
def ui_app(pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(AppContext(settings=settings, pool=pool, clock=clock))


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app with no database behind it: enough for everything that must be refused."""
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


@pytest.fixture
async def bare_console(bare: httpx.AsyncClient) -> Console:
    """Logged in to the database-less app (CSRF and session checks come before any query)."""
    r = await log_in(bare)
    assert r.status_code == 303, r.text
    page = await bare.get("/ui/upload")
    assert page.status_code == 200
    return Console(bare, csrf_of(page.text))
