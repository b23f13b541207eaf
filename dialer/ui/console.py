"""The console's core: sessions, CSRF, page rendering, errors and small forms.

Every page needs a session (``Sess``): a genuine cookie whose session was not logged out
(``ui.logouts``, one query); every form that changes something carries a CSRF token (403
without a good one). Route modules (``auth``,
``batches``, ``upload``, ``targets``, ``dnc``) take the ``Console`` as a dependency (``UI``)
and stay thin.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, Request
from markupsafe import escape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dialer import __version__
from dialer.errors import DialerError
from dialer.http import errors
from dialer.http.bodies import content_type
from dialer.http.connections import trust_body
from dialer.http.context import AppContext
from dialer.http.limits import read_body
from dialer.ui import logouts
from dialer.ui.forms import FormError, read_form
from dialer.ui.render import environment
from dialer.ui.session import COOKIE, Session, Sessions

log = logging.getLogger(__name__)

SMALL_FORM = 64 * 1024
MAX_FIELDS = 50  # a console form has a handful

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
FRAGMENT_HEADER = "x-dialer-live"


class UiError(Exception):
    """Answered as an HTML page (or a short fragment for the live regions)."""

    def __init__(self, status: int, message: str, title: str | None = None,
                 location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.title = title or {401: "Please log in", 403: "Not allowed", 404: "Not found",
                               413: "Too large"}.get(status, "Something went wrong")
        self.location = location


@dataclass
class Flash:
    kind: str  # ok | warn | error
    text: str


def int_param(value: str | None, default: int = 0, lo: int = 0, hi: int = 2**62) -> int:
    """A query parameter as an int in [lo, hi]; ``default`` when absent or not a number."""
    try:
        n = int(value) if value not in (None, "") else default
    except ValueError:
        return default
    return max(lo, min(hi, n))


def text_param(value: str | None, max_len: int) -> str:
    """A free-text query parameter (a search) trimmed to ``max_len`` characters; a NUL,
    which PostgreSQL can neither store nor compare, is dropped (as ``int_param`` ignores
    what is not a number)."""
    return (value or "").replace("\x00", "").strip()[:max_len]


def see_other(location: str) -> Response:
    """The redirect after a form that worked (or a login)."""
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


class Console:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.env = environment()
        self.sessions = Sessions(ctx.settings.secret())
        # call counts by state of batches that cannot change any more (kept by ui.batches)
        self.ended_counts: dict[uuid.UUID, dict[str, int]] = {}

    @property
    def state_dir(self) -> Path:
        return Path(self.ctx.settings.state_dir)

    @property
    def incoming(self) -> Path:
        """Where form files land while they are read."""
        return self.state_dir / "uploads" / ".incoming"

    def now(self) -> float:
        return self.ctx.clock.now().timestamp()

    def tokens(self) -> list[str]:
        return [t.get_secret_value() for t in self.ctx.settings.api_tokens]

    # -- sessions and CSRF -------------------------------------------------------------
    def signed_session(self, request: Request) -> Session | None:
        """The session of a genuine cookie, unexpired, its token still configured, not known
        here to be logged out. The database was not asked: see ``session``."""
        return self.sessions.read(request.cookies.get(COOKIE), self.now(), self.tokens())

    async def session(self, request: Request) -> Session | None:
        """The request's session: a genuine cookie (``signed_session``) whose session was not
        logged out on any instance.

        While the database is away a form is refused (the error goes on to ``errors``: the
        console's 503 page) and a page view goes on: it shows nothing it does not read from
        that database, and this process still refuses the logouts it has seen."""
        s = self.signed_session(request)
        if s is None:
            return None
        try:
            gone = await logouts.revoked(self.ctx.pool, s.sid)
        except Exception as e:
            if not errors.db_away(e) or request.method not in ("GET", "HEAD"):
                raise
            log.warning("console session not checked for a logout: the database is unreachable",
                        extra={"path": request.url.path, "error": type(e).__name__})
            return s
        if gone:
            self.sessions.remember_revoked(s, self.now())
            return None
        return s

    async def log_out(self, s: Session) -> None:
        """End ``s`` on every instance: written to the database, then remembered here."""
        await logouts.record(self.ctx.pool, s, self.ctx.clock.now())
        self.sessions.remember_revoked(s, self.now())

    async def need_session(self, request: Request) -> Session:
        s = await self.session(request)
        if s is not None:
            request.state.ui_session = s
            trust_body(request.scope)  # an upload may take its time; the login form may not
            return s
        if request.headers.get(FRAGMENT_HEADER) or request.query_params.get("part"):
            raise UiError(401, "Your session has ended. Log in again to keep watching.")
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise UiError(303, "log in first", location="/ui/login?" + urlencode({"next": target}))
        raise UiError(403, "Your session has ended, so this form was not accepted. Log in and try again.")

    def check_csrf(self, s: Session, presented: str | None) -> None:
        if not self.sessions.csrf_ok(s, presented):
            raise UiError(403, "This form was stale or did not come from this console (CSRF check "
                               "failed). Reload the page and try again.")

    # -- forms, pages, errors ------------------------------------------------------------
    async def small_form(self, request: Request, limit: int = SMALL_FORM) -> dict[str, str]:
        ctype = content_type(request)
        if ctype == "multipart/form-data":
            try:
                form = await read_form(request, self.incoming, limit, file_fields=())
            except FormError as e:  # a body that is not the form it says (400), or too big (413)
                raise UiError(e.status, f"{e.message}. Reload the page and try again.") from None
            return form.fields
        if ctype not in ("application/x-www-form-urlencoded", ""):
            raise UiError(415, "expected a form")
        try:
            body = await read_body(request, limit)
        except DialerError as e:
            raise UiError(e.http_status, e.message) from None
        try:
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True,
                              max_num_fields=MAX_FIELDS)
        except ValueError:  # more fields than any console form has
            raise UiError(400, f"the form could not be read: it has more than {MAX_FIELDS} fields. "
                               "Reload the page and try again.") from None
        return {k: v[0] for k, v in parsed.items()}

    def page(self, request: Request, template: str, status: int = 200, **data: Any) -> HTMLResponse:
        s: Session | None = getattr(request.state, "ui_session", None)
        ctx = self.ctx
        data.setdefault("flash", None)
        html = self.env.get_template(template).render(
            request=request, session=s, csrf=self.sessions.csrf_token(s) if s else "",
            version=__version__, sandbox=ctx.settings.sandbox_mode, nav=data.pop("nav", ""), **data,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def unavailable(self, request: Request) -> Response:
        """The page for a request the database could not answer (it is away for now)."""
        return await self.on_error(request, UiError(
            503, "The database is unreachable right now; try again in a few seconds.",
            title="Database unavailable"))

    async def unstorable(self, request: Request) -> Response:
        """The page for text PostgreSQL refused (a NUL that reached a query)."""
        return await self.on_error(request, UiError(
            400, "What you sent contains a character that cannot be stored (such as NUL). "
                 "Remove it and try again.", title="Not accepted"))

    async def no_route(self, request: Request, status: int) -> Response:
        """The page for a /ui path (404) or method (405) the console does not have."""
        if status == 405:
            return await self.on_error(request, UiError(405, "This page does not take that request.",
                                                        title="Not allowed"))
        return await self.on_error(request, UiError(404, "There is no such page in the console.",
                                                    title="Not found"))

    async def on_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UiError)
        if exc.status in (302, 303) and exc.location:
            return RedirectResponse(exc.location, status_code=exc.status, headers=SECURITY_HEADERS)
        if request.headers.get(FRAGMENT_HEADER) or request.query_params.get("part"):
            return HTMLResponse(f'<p class="flash error" role="alert">{escape(exc.message)}</p>',
                                status_code=exc.status, headers=SECURITY_HEADERS)
        return self.page(request, "error.html", exc.status, title=exc.title, message=exc.message,
                         logged_in=getattr(request.state, "ui_session", None) is not None)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.ui
    return console


async def _need_session(request: Request) -> Session:
    return await console_of(request).need_session(request)


UI = Annotated[Console, Depends(console_of)]
Sess = Annotated[Session, Depends(_need_session)]
