"""Sessions and CSRF: every page refuses without a session, forged cookies and forms fail."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import asyncpg
import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.ui.session import COOKIE, SESSION_TTL_S, Sessions
from tests.conftest import TOKEN
from tests.ui.conftest import BASE, Console, csrf_of, log_in

BATCH = "00000000-0000-0000-0000-000000000000"
PAGES = ["/ui/", "/ui/upload", "/ui/batches?page=2", f"/ui/batches/{BATCH}", "/ui/upload", "/ui/targets",
         "/ui/dnc", "/ui/dnc?q=415", f"/ui/batches/{BATCH}/report.json", f"/ui/batches/{BATCH}/results.csv",
         f"/ui/batches/{BATCH}/results.xlsx"]
FRAGMENTS = ["/ui/targets?part=list", f"/ui/batches/{BATCH}?part=summary", f"/ui/batches/{BATCH}?part=calls",
             "/ui/targets?part=list"]
POSTS = ["/ui/logout", f"/ui/batches/{BATCH}/cancel", "/ui/targets/sales/pause", "/ui/targets/sales/resume",
         "/ui/dnc", "/ui/dnc/remove", "/ui/upload"]


async def test_every_page_refuses_without_a_session(bare: httpx.AsyncClient) -> None:
    for path in PAGES:
        r = await bare.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/ui/login?next=%2Fui%2F"), path
    for path in FRAGMENTS:  # the live regions' polls
        r = await bare.get(path, headers={"X-Dialer-Live": "1"})
        assert r.status_code == 401, path
        assert "session" in r.text
    for path in POSTS:
        r = await bare.post(path, data={"csrf": "x", "number": "+14155550100"})
        assert r.status_code == 403, path
        r = await bare.post(path, files={"file": ("leads.csv", b"number\n+14155550100\n")},
                            data={"csrf": "x"})
        assert r.status_code == 403, path


async def test_root_redirects_to_the_console_and_ui_stays_out_of_openapi(bare: httpx.AsyncClient) -> None:
    r = await bare.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert (await bare.get("/ui")).headers["location"] == "/ui/"
    login = await bare.get("/ui/upload", follow_redirects=True)
    assert login.status_code == 200 and 'name="token"' in login.text
    spec = (await bare.get("/openapi.json")).json()
    assert not [p for p in spec["paths"] if p == "/" or p.startswith("/ui")]
    assert "/v1/batches" in spec["paths"]


async def test_login_sets_a_signed_httponly_strict_cookie_with_an_expiry(anon: httpx.AsyncClient) -> None:
    r = await log_in(anon, next_="/ui/upload")
    assert r.status_code == 303 and r.headers["location"] == "/ui/upload"
    header = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
    attrs = {a.strip().split("=")[0].lower(): a for a in header.split(";")}
    assert "httponly" in attrs
    assert attrs["samesite"].strip().lower() == "samesite=strict"
    assert attrs["path"].strip() == "Path=/ui"
    assert attrs["max-age"].strip() == f"Max-Age={SESSION_TTL_S}"
    assert "expires" in attrs
    value = header.split(";")[0].split("=", 1)[1]
    assert TOKEN not in value  # only a fingerprint of the token travels
    page = await anon.get("/ui/upload")
    assert page.status_code == 200 and "sales" in page.text
    for h in ("content-security-policy", "x-frame-options", "cache-control"):
        assert h in page.headers


async def test_wrong_token_is_refused_and_sets_no_session(bare: httpx.AsyncClient) -> None:
    r = await log_in(bare, token="not-the-token")
    assert r.status_code == 401
    assert "not one of this daemon" in r.text
    assert COOKIE not in r.cookies
    assert (await bare.get("/ui/upload")).status_code == 303


async def test_login_form_needs_its_csrf_token(bare: httpx.AsyncClient) -> None:
    await bare.get("/ui/login")
    r = await bare.post("/ui/login", data={"token": TOKEN, "csrf": "forged"})
    assert r.status_code == 403
    bare.cookies.clear()
    page = await bare.get("/ui/login")
    token = csrf_of(page.text)
    bare.cookies.clear()  # the nonce cookie is what the token is bound to
    r = await bare.post("/ui/login", data={"token": TOKEN, "csrf": token})
    assert r.status_code == 403
    assert COOKIE not in r.cookies


def _tamper(cookie: str) -> str:
    v, payload, mac = cookie.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["exp"] += 10**6
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{v}.{forged}.{mac}"


async def test_forged_cookies_are_refused(bare: httpx.AsyncClient, bare_app: FastAPI) -> None:
    await log_in(bare)
    good = bare.cookies[COOKIE]
    now = bare_app.state.ctx.clock.now().timestamp()
    other_key, _ = Sessions(b"some-other-secret").issue(TOKEN, now)
    forged = [
        _tamper(good),                                   # payload changed, MAC kept
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),  # MAC changed
        other_key,                                       # signed with another secret
        "v1.e30.",                                       # empty MAC
        "garbage",
        good + ".x",
    ]
    for value in forged:
        bare.cookies.clear()
        bare.cookies.set(COOKIE, value, domain="testserver.local", path="/ui")
        r = await bare.get("/ui/upload")
        assert r.status_code == 303, value
        r = await bare.get("/ui/batches?part=rows")
        assert r.status_code == 401, value


async def test_sessions_expire(anon: httpx.AsyncClient, clock: FakeClock) -> None:
    await log_in(anon)
    assert (await anon.get("/ui/upload")).status_code == 200
    clock.advance(SESSION_TTL_S - 5)
    assert (await anon.get("/ui/upload")).status_code == 200
    clock.advance(10)
    assert (await anon.get("/ui/upload")).status_code == 303


async def test_a_session_ends_when_its_token_is_removed(bare: httpx.AsyncClient, bare_app: FastAPI) -> None:
    await log_in(bare)
    cookie = bare.cookies[COOKIE]
    ctx: AppContext = bare_app.state.ctx
    rotated = ctx.settings.model_copy(update={"api_tokens": [SecretStr("new-token")]})
    app2 = create_app(AppContext(settings=rotated, pool=ctx.pool, clock=ctx.clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url=BASE) as c:
        c.cookies.set(COOKIE, cookie, domain="testserver.local", path="/ui")
        assert (await c.get("/ui/upload")).status_code == 303
        assert (await log_in(c, token="new-token")).status_code == 303


async def test_logout_needs_csrf_and_then_ends_the_session(console: Console) -> None:
    cookie = console.c.cookies[COOKIE]
    r = await console.c.post("/ui/logout", data={"csrf": "nope"})
    assert r.status_code == 403
    assert (await console.c.get("/ui/upload")).status_code == 200
    r = await console.post("/ui/logout")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?bye=1"
    assert (await console.c.get("/ui/upload")).status_code == 303
    # the old cookie, replayed, is refused too
    console.c.cookies.set(COOKIE, cookie, domain="testserver.local", path="/ui")
    assert (await console.c.get("/ui/upload")).status_code == 303


async def test_csrf_failures_are_403(console: Console) -> None:
    bad = console.csrf[:-2] + ("xx" if not console.csrf.endswith("xx") else "yy")
    for path in POSTS:
        for data in ({}, {"csrf": ""}, {"csrf": "forged-token"}, {"csrf": bad}):
            r = await console.c.post(path, data={**data, "number": "+14155550100", "numbers": "+14155550100"})
            assert r.status_code == 403, (path, data, r.text[:300])
            assert "CSRF" in r.text
    # the session still works
    assert (await console.c.get("/ui/upload")).status_code == 200


async def test_multipart_forms_check_csrf_before_storing_the_file(console: Console, settings: Settings) -> None:
    files = {"file": ("leads.csv", b"number\n+14155550100\n", "text/csv")}
    r = await console.c.post("/ui/upload", data={"csrf": "forged", "target": "sales"}, files=files)
    assert r.status_code == 403
    r = await console.c.post("/ui/dnc", data={"csrf": "forged"}, files={"file": ("d.txt", b"+14155550100\n")})
    assert r.status_code == 403
    page = await console.c.get("/ui/batches")
    assert "No batches yet" in page.text
    incoming = settings.state_dir / "uploads" / ".incoming"
    assert not incoming.exists() or not list(incoming.iterdir())


async def test_a_csrf_token_belongs_to_one_session(make_client: Callable[..., httpx.AsyncClient],
                                                   console: Console) -> None:
    async with make_client() as other:
        await log_in(other)
        r = await other.post("/ui/targets/sales/pause", data={"csrf": console.csrf})
        assert r.status_code == 403


async def test_login_only_redirects_inside_the_console(bare: httpx.AsyncClient) -> None:
    for nxt, expected in [("//evil.example/x", "/ui/"), ("https://evil.example/", "/ui/"),
                          ("/v1/batches", "/ui/"), ("/ui/dnc?q=1", "/ui/dnc?q=1"), ("/ui\\\\evil", "/ui/")]:
        bare.cookies.clear()
        r = await log_in(bare, next_=nxt)
        assert r.status_code == 303 and r.headers["location"] == expected, nxt


async def test_a_logged_out_session_is_refused_by_another_instance_and_after_a_restart(
        console: Console, pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    """Behind a load balancer every instance answers every request from the database: a
    logout on one holds on the others, and on an instance started after it."""
    cookie = console.c.cookies[COOKIE]
    other = create_app(AppContext(settings=settings, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=other), base_url=BASE) as c:
        c.cookies.set(COOKIE, cookie, domain="testserver.local", path="/ui")
        assert (await c.get("/ui/upload")).status_code == 200  # the same session, on another instance
        assert (await console.post("/ui/logout")).status_code == 303
        assert (await c.get("/ui/upload")).status_code == 303
        assert (await c.get("/ui/targets?part=list", headers={"X-Dialer-Live": "1"})).status_code == 401
        r = await c.post("/ui/targets/sales/pause", data={"csrf": console.csrf})
        assert r.status_code == 403 and "session has ended" in r.text
    restarted = create_app(AppContext(settings=settings, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url=BASE) as c:
        c.cookies.set(COOKIE, cookie, domain="testserver.local", path="/ui")
        assert (await c.get("/ui/upload")).status_code == 303
        login = await c.get("/ui/login")  # the login form, not a redirect into the console
        assert login.status_code == 200 and 'name="token"' in login.text
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT paused FROM target_state WHERE target = 'sales'") is not True


async def test_a_logout_is_kept_until_its_session_would_have_expired(
        make_client: Callable[..., httpx.AsyncClient], pool: asyncpg.Pool, clock: FakeClock) -> None:
    async def log_in_and_out() -> str:
        async with make_client() as c:
            assert (await log_in(c)).status_code == 303
            csrf = csrf_of((await c.get("/ui/upload")).text)
            assert (await c.post("/ui/logout", data={"csrf": csrf})).status_code == 303
            return str(c.cookies.get(COOKIE) or "")

    async def kept() -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM console_sessions_revoked"))

    await log_in_and_out()
    clock.advance(SESSION_TTL_S - 60)
    await log_in_and_out()
    assert await kept() == 2
    clock.advance(120)  # the first session has expired: its cookie is refused for that alone
    await log_in_and_out()
    assert await kept() == 2  # the next logout dropped the first one's row

