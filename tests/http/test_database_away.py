"""While the database is away mid-run the API and the console answer 503 with
``Retry-After`` (SPEC §8: it all resumes by itself), in their own shapes: the API's JSON
error, the console's page. Never a bare 500."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from tests.conftest import TOKEN
from tests.ui.conftest import BASE, csrf_of, log_in

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _closed_port() -> int:
    """A local port nothing listens on: every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def away_app(settings: Settings) -> AsyncIterator[FastAPI]:
    # a pool that opens its connections on demand, at an address where nothing answers:
    # the state of a pool whose server stopped under it
    pool = await asyncpg.create_pool(f"postgresql://dialer@127.0.0.1:{_closed_port()}/dialer",
                                     min_size=0, max_size=2)
    try:
        yield create_app(AppContext(settings=settings, pool=pool, clock=FakeClock()))
    finally:
        await pool.close()


@pytest.fixture
async def client(away_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=away_app, raise_app_exceptions=False),
                                 base_url=BASE, follow_redirects=False) as c:
        yield c


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/targets", None),
    ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000", None),
    ("POST", "/v1/batches", {"leads": [{"number": "+14155550100"}]}),
    ("POST", "/v1/dnc", {"numbers": ["+14155550100"]}),
])
async def test_the_api_answers_503_with_retry_after(client: httpx.AsyncClient, method: str, path: str,
                                                    body: object) -> None:
    r = await client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    err = r.json()["error"]
    assert err["code"] == "database_unavailable" and "unreachable" in err["message"]
    assert (await client.get("/readyz")).status_code == 503


async def test_the_console_answers_its_own_503_page(client: httpx.AsyncClient) -> None:
    assert (await log_in(client)).status_code == 303
    r = await client.get("/ui/batches")
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5" and r.headers["content-type"].startswith("text/html")
    assert "Database unavailable" in r.text and "try again" in r.text
    # a form posted meanwhile too (the CSRF check passes; the query fails)
    page = await client.get("/ui/upload")
    assert page.status_code == 200
    r = await client.post("/ui/dnc", data={"csrf": csrf_of(page.text), "numbers": "+14155550100"})
    assert r.status_code == 503 and "Database unavailable" in r.text


async def test_a_console_form_is_refused_when_its_session_cannot_be_checked_for_a_logout(
        client: httpx.AsyncClient) -> None:
    """A logout is kept in the database (ui.logouts): while it is away a form is not taken
    unchecked, even one that needs no query; a page view goes on (it shows nothing it does
    not read from the database)."""
    assert (await log_in(client)).status_code == 303
    page = await client.get("/ui/upload")
    assert page.status_code == 200
    csrf = csrf_of(page.text)
    # checked, this form would be answered 415 (not a file upload) without a query
    r = await client.post("/ui/upload", data={"csrf": csrf, "target": "sales"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and "Database unavailable" in r.text
    r = await client.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 503 and "Database unavailable" in r.text
    assert (await client.get("/ui/upload")).status_code == 200  # still logged in: nothing was recorded


async def test_a_connection_closed_inside_a_transaction_is_503_a_misuse_stays_500(
        pool: asyncpg.Pool, settings: Settings) -> None:
    """The server ending a backend mid-transaction: the statement fails, then asyncpg's
    transaction exit raises InterfaceError ("the underlying connection is closed"), which
    hides the first error. That is the database away (503), not the misuse an
    InterfaceError mostly is (a 500)."""
    app = create_app(AppContext(settings=settings, pool=pool, clock=FakeClock()))

    async def killed() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    async def misuse() -> None:
        raise asyncpg.InterfaceError("cannot perform operation: another operation is in progress")

    app.add_api_route("/v1/killed", killed)
    app.add_api_route("/v1/misuse", misuse)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url=BASE) as c:
        r = await c.get("/v1/killed", headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["error"]["code"] == "database_unavailable"
        assert (await c.get("/v1/misuse", headers=AUTH)).status_code == 500
