"""Bad input to the console is answered by the console: an HTML page with a 4xx status and
a message saying what was wrong, never a 500 or the API's JSON."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from dialer.clock import FakeClock
from dialer.config import Settings
from tests.ui.conftest import Console
from tests.ui.test_pages import _post_batch

BATCH = "00000000-0000-0000-0000-000000000000"
# every route of the console that takes a form
FORM_POSTS = ["/ui/logout", f"/ui/batches/{BATCH}/cancel", "/ui/targets/sales/pause", "/ui/targets/sales/resume",
              "/ui/dnc", "/ui/dnc/remove", "/ui/upload", "/ui/calls/1/schedule"]
MALFORMED = [
    ("multipart/form-data", b"x"),  # no boundary at all
    ("multipart/form-data; boundary=b", b"x"),  # not the boundary it names
    ("multipart/form-data; boundary=b", b"--b\r\nno colon in this header\r\n\r\nv\r\n--b--\r\n"),
    ("application/x-www-form-urlencoded", "&".join(f"f{i}=1" for i in range(60)).encode()),  # too many fields
]


def is_console_page(r: httpx.Response) -> bool:
    return r.headers["content-type"].startswith("text/html") and "<html" in r.text


@pytest.mark.parametrize(("ctype", "body"), MALFORMED,
                         ids=["no-boundary", "other-boundary", "bad-part-header", "too-many-fields"])
async def test_a_form_that_cannot_be_read_is_a_400_page_on_every_form_route(
        anon: httpx.AsyncClient, console: Console, ctype: str, body: bytes) -> None:
    await anon.get("/ui/login")  # the login form needs no session: its nonce cookie is enough
    r = await anon.post("/ui/login", content=body, headers={"content-type": ctype})
    assert r.status_code == 400, r.text[:300]
    assert is_console_page(r) and "the form could not be read" in r.text
    for path in FORM_POSTS:
        r = await console.c.post(path, content=body, headers={"content-type": ctype})
        assert r.status_code == 400, (path, r.text[:300])
        assert is_console_page(r) and "the form could not be read" in r.text, path
    # nothing was done: still logged in, the target still running
    page = await console.c.get("/ui/targets")
    assert page.status_code == 200 and "Pause sales" in page.text


async def test_a_nul_in_a_search_is_dropped_like_other_bad_query_input(
        console: Console, pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    bid = await _post_batch(pool, settings, clock, [f"+1415555{i:04d}" for i in range(100, 130)])
    r = await console.c.get(f"/ui/batches/{bid}", params={"q": "ext-1\x009"})  # searched as ext-19
    assert r.status_code == 200 and is_console_page(r)
    assert r.text.count('data-label="E.164"') == 1 and "+14155550119" in r.text
    r = await console.c.get(f"/ui/batches/{bid}", params={"q": "\x00", "part": "calls"})
    assert r.status_code == 200 and r.text.count('data-label="E.164"') == 30
    r = await console.c.get("/ui/callbacks", params={"agent": "\x00"})
    assert r.status_code == 200 and is_console_page(r) and "Callbacks" in r.text
    r = await console.c.get("/ui/dnc", params={"q": "\x00", "after": "\x00"})
    assert r.status_code == 200 and is_console_page(r) and "The list is empty" in r.text


async def test_text_postgresql_refuses_is_a_console_page_under_ui_and_the_apis_error_elsewhere(
        ui_app: FastAPI, anon: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async def store_a_nul() -> None:  # what a console page would do with a NUL it let through
        await pool.fetchval("SELECT $1::text", "a\x00b")

    ui_app.add_api_route("/ui/nul", store_a_nul)
    ui_app.add_api_route("/nul", store_a_nul)
    r = await anon.get("/ui/nul")
    assert r.status_code == 400 and is_console_page(r) and "cannot be stored (such as NUL)" in r.text
    r = await anon.get("/nul")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid"


async def test_a_console_path_or_method_that_does_not_exist_is_a_console_page(console: Console) -> None:
    """It was the API's JSON 404 (and 405)."""
    r = await console.c.get("/ui/no-such-page")
    assert r.status_code == 404 and is_console_page(r) and "no such page" in r.text
    r = await console.c.delete("/ui/batches")
    assert r.status_code == 405 and is_console_page(r)
    api = await console.c.get("/v1/no-such-route")  # the API keeps its JSON (401 first: no token)
    assert api.status_code == 401 and api.json()["error"]["code"]
