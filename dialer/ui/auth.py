"""Logging in to the console with one of the daemon's API tokens, and logging out.

The login form has no session yet, so its CSRF token is tied to a short-lived nonce
cookie; the session cookie is HttpOnly, SameSite=Strict, scoped to the console's path.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from dialer.ui.console import UI, Console, Flash, Sess, UiError, see_other
from dialer.ui.session import COOKIE, COOKIE_PATH, LOGIN_COOKIE, LOGIN_TTL_S

router = APIRouter(include_in_schema=False)


@router.get("/ui/login")
async def login_form(request: Request, ui: UI) -> Response:
    nxt = _safe_next(request.query_params.get("next"))
    if await ui.session(request) is not None:
        return RedirectResponse(nxt, status_code=303)
    flash = Flash("ok", "You have logged out.") if request.query_params.get("bye") else None
    return _login_page(ui, request, nxt, flash)


@router.post("/ui/login")
async def login(request: Request, ui: UI) -> Response:
    fields = await ui.small_form(request)
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not ui.sessions.login_csrf_ok(nonce, fields.get("csrf")):
        raise UiError(403, "The login form had expired or did not come from this console "
                           "(CSRF check failed). Open the login page again.")
    nxt = _safe_next(fields.get("next"))
    tokens = ui.tokens()
    if not tokens:
        return _login_page(ui, request, nxt, Flash(
            "error", "The console is disabled: no API tokens are configured (DIALER_API_TOKENS)."),
            status=401)
    token = ui.sessions.token_matches(fields.get("token", "").strip(), tokens)
    if token is None:
        return _login_page(ui, request, nxt, Flash(
            "error", "That is not one of this daemon's API tokens. Check it and try again."),
            status=401)
    cookie, s = ui.sessions.issue(token, ui.now())
    resp = see_other(nxt)
    ttl = int(s.expires - ui.now())
    resp.set_cookie(COOKIE, cookie, max_age=ttl, expires=ttl, path=COOKIE_PATH,
                    httponly=True, samesite="strict", secure=request.url.scheme == "https")
    resp.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return resp


@router.post("/ui/logout")
async def logout(request: Request, ui: UI, s: Sess) -> Response:
    fields = await ui.small_form(request)
    ui.check_csrf(s, fields.get("csrf"))
    await ui.log_out(s)
    resp = see_other("/ui/login?bye=1")
    resp.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return resp


def _safe_next(value: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


def _login_page(ui: Console, request: Request, nxt: str, flash: Flash | None, status: int = 200) -> Response:
    nonce = ui.sessions.new_login_nonce()
    resp = ui.page(request, "login.html", status, nxt=nxt, flash=flash,
                   login_csrf=ui.sessions.login_csrf(nonce), title="Log in",
                   no_tokens=not ui.tokens())
    resp.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_TTL_S, path=COOKIE_PATH, httponly=True,
                    samesite="strict", secure=request.url.scheme == "https")
    return resp
