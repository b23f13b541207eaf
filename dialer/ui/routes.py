"""The console's pages: login, batches, a batch, upload, targets, do-not-call.

Server-rendered (Jinja2); the little JavaScript in ``static/app.js`` only refreshes the
live regions (fragments of the same templates, ``?part=...``), shows times in the
browser's zone and handles drag-and-drop. Every page needs a session; every form that
changes something carries a CSRF token (403 without a good one).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from dialer import __version__
from dialer.dispatch.targets import set_paused as pause_or_resume
from dialer.errors import DialerError
from dialer.http.context import AppContext
from dialer.http.limits import read_body
from dialer.http.targets import target_views
from dialer.intake import phones
from dialer.intake.files import FileIngestor, FileOutcome
from dialer.intake.inbox import unique_path
from dialer.intake.readers import detect_format
from dialer.lifecycle import moves, observe
from dialer.store.queries import Q
from dialer.ui import downloads
from dialer.ui.render import STATIC, as_dict, batch_active, environment, outcome_chart, progress, source_label
from dialer.ui.session import COOKIE, COOKIE_PATH, LOGIN_COOKIE, LOGIN_TTL_S, Session, Sessions
from dialer.ui.forms import FormError, StreamedForm, read_form

BATCHES_PER_PAGE = 20
CALLS_PER_PAGE = 50
REJECTED_PER_PAGE = 100
DNC_PER_PAGE = 50
SMALL_FORM = 64 * 1024

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


def _int(value: str | None, default: int = 0, lo: int = 0, hi: int = 2**62) -> int:
    try:
        n = int(value) if value not in (None, "") else default
    except ValueError:
        return default
    return max(lo, min(hi, n))


def _safe_next(value: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _need_session(request: Request) -> Session:
    console: Console = request.app.state.ui
    return await console.need_session(request)


Sess = Annotated[Session, Depends(_need_session)]


class Console:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.env = environment()
        self.sessions = Sessions(ctx.settings.secret())
        self._ended_counts: dict[uuid.UUID, dict[str, int]] = {}  # batches that cannot change

    # -- plumbing --------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(self.ctx.settings.state_dir)

    def _now(self) -> float:
        return self.ctx.clock.now().timestamp()

    def _tokens(self) -> list[str]:
        return [t.get_secret_value() for t in self.ctx.settings.api_tokens]

    def session(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE), self._now(), self._tokens())

    async def need_session(self, request: Request) -> Session:
        s = self.session(request)
        if s is not None:
            request.state.ui_session = s
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

    async def small_form(self, request: Request, limit: int = SMALL_FORM) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await read_form(request, self.state_dir / "uploads" / ".incoming", limit, file_fields=())
            return form.fields
        if ctype not in ("application/x-www-form-urlencoded", ""):
            raise UiError(415, "expected a form")
        try:
            body = await read_body(request, limit)
        except DialerError as e:
            raise UiError(e.http_status, e.message) from None
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
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

    async def on_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UiError)
        if exc.status in (302, 303) and exc.location:
            return RedirectResponse(exc.location, status_code=exc.status, headers=SECURITY_HEADERS)
        if request.headers.get(FRAGMENT_HEADER) or request.query_params.get("part"):
            return HTMLResponse(f'<p class="flash error" role="alert">{_esc(exc.message)}</p>',
                                status_code=exc.status, headers=SECURITY_HEADERS)
        return self.page(request, "error.html", exc.status, title=exc.title, message=exc.message,
                         logged_in=self.session(request) is not None)

    # -- data --------------------------------------------------------------------------
    async def _batch_counts(self, conn: Any, batches: list[Any]) -> dict[uuid.UUID, dict[str, int]]:
        out: dict[uuid.UUID, dict[str, int]] = {}
        todo = []
        for b in batches:
            cached = self._ended_counts.get(b["id"])
            if cached is not None:
                out[b["id"]] = cached
            else:
                todo.append(b["id"])
                out[b["id"]] = {}
        if todo:
            for r in await conn.fetch(Q.ui_batches_call_counts, todo):
                out[r["batch_id"]][r["state"]] = r["n"]
        for b in batches:
            if b["ended_at"] is not None and b["id"] not in self._ended_counts:
                if len(self._ended_counts) > 5000:
                    self._ended_counts.clear()
                self._ended_counts[b["id"]] = out[b["id"]]
        return out

    async def _batch(self, conn: Any, batch_id: str) -> Any:
        try:
            bid = uuid.UUID(batch_id)
        except ValueError:
            raise UiError(404, "There is no such batch. It may have been typed wrong.") from None
        b = await conn.fetchrow(Q.batch_get, bid)
        if b is None:
            raise UiError(404, f"There is no batch {bid}.")
        return b

    def _batch_view(self, b: Any, by_state: dict[str, int]) -> dict[str, Any]:
        p = progress(by_state)
        return {
            "b": b, "id": str(b["id"]), "source": source_label(b["source"], b["source_name"]),
            "counts": as_dict(b["counts"]), "by_state": by_state, "progress": p,
            "active": batch_active(b["state"], by_state),
            # big batches cost more to count: poll them less often
            "interval": 1500 if p.total < 50_000 else 5000,
            "rejected": sum(as_dict(b["counts"]).get(k, 0) for k in ("invalid", "duplicate", "dnc")),
        }

    # -- routes --------------------------------------------------------------------------
    def routes(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)

        @r.get("/")
        async def root() -> Response:
            return RedirectResponse("/ui/", status_code=307)

        @r.get("/ui")
        async def ui_bare() -> Response:
            return RedirectResponse("/ui/", status_code=307)

        # ---- login / logout ------------------------------------------------------------
        @r.get("/ui/login")
        async def login_form(request: Request) -> Response:
            nxt = _safe_next(request.query_params.get("next"))
            if self.session(request) is not None:
                return RedirectResponse(nxt, status_code=303)
            flash = Flash("ok", "You have logged out.") if request.query_params.get("bye") else None
            return self._login_page(request, nxt, flash)

        @r.post("/ui/login")
        async def login(request: Request) -> Response:
            fields = await self.small_form(request)
            nonce = request.cookies.get(LOGIN_COOKIE)
            if not self.sessions.login_csrf_ok(nonce, fields.get("csrf")):
                raise UiError(403, "The login form had expired or did not come from this console "
                                   "(CSRF check failed). Open the login page again.")
            nxt = _safe_next(fields.get("next"))
            tokens = self._tokens()
            if not tokens:
                return self._login_page(request, nxt, Flash(
                    "error", "The console is disabled: no API tokens are configured (DIALER_API_TOKENS)."),
                    status=401)
            token = self.sessions.token_matches(fields.get("token", "").strip(), tokens)
            if token is None:
                return self._login_page(request, nxt, Flash(
                    "error", "That is not one of this daemon's API tokens. Check it and try again."),
                    status=401)
            cookie, s = self.sessions.issue(token, self._now())
            resp = RedirectResponse(nxt, status_code=303, headers=SECURITY_HEADERS)
            ttl = int(s.expires - self._now())
            resp.set_cookie(COOKIE, cookie, max_age=ttl, expires=ttl, path=COOKIE_PATH,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
            resp.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
            return resp

        @r.post("/ui/logout")
        async def logout(request: Request, s: Sess) -> Response:
            fields = await self.small_form(request)
            self.check_csrf(s, fields.get("csrf"))
            self.sessions.revoke(s, self._now())
            resp = RedirectResponse("/ui/login?bye=1", status_code=303, headers=SECURITY_HEADERS)
            resp.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
            return resp

        # ---- batches -------------------------------------------------------------------
        async def batches_page(request: Request) -> Response:
            page = _int(request.query_params.get("page"), 1, 1, 10**6)
            async with self.ctx.pool.acquire() as conn:
                rows = await conn.fetch(Q.ui_batches_page, BATCHES_PER_PAGE, (page - 1) * BATCHES_PER_PAGE)
                total = int(await conn.fetchval(Q.ui_batches_total))
                counts = await self._batch_counts(conn, list(rows))
            items = [self._batch_view(b, counts[b["id"]]) for b in rows]
            pages = max(1, -(-total // BATCHES_PER_PAGE))
            data: dict[str, Any] = dict(
                items=items, page=page, pages=pages, total=total, active=any(i["active"] for i in items),
                live_url=f"/ui/batches?page={page}&part=rows", inbox=str(self.ctx.settings.inbox),
                default_target=self.ctx.settings.default_target,
                nav="batches", title="Batches",
            )
            if request.query_params.get("part") == "rows":
                return self.page(request, "_batches_rows.html", **data)
            return self.page(request, "batches.html", **data)

        @r.get("/ui/")
        async def home(request: Request, s: Sess) -> Response:
            return await batches_page(request)

        @r.get("/ui/batches")
        async def batches(request: Request, s: Sess) -> Response:
            return await batches_page(request)

        @r.get("/ui/batches/{batch_id}")
        async def batch(request: Request, batch_id: str, s: Sess) -> Response:
            q = request.query_params
            part = q.get("part")
            search = (q.get("q") or "").strip()[:100]
            after, before = _int(q.get("after")), _int(q.get("before"))
            rafter = _int(q.get("rafter"))
            async with self.ctx.pool.acquire() as conn:
                b = await self._batch(conn, batch_id)
                by_state = {x["state"]: x["n"] for x in await conn.fetch(Q.batch_call_counts, b["id"])}
                view = self._batch_view(b, by_state)
                data: dict[str, Any] = dict(view=view, nav="batches", search=search,
                                            title=f"Batch {view['source']}")
                if part in (None, "summary"):
                    data["outcomes"] = {x["outcome"]: x["n"]
                                        for x in await conn.fetch(Q.batch_outcome_counts, b["id"])}
                    data["chart"] = outcome_chart(by_state)
                if part in (None, "calls"):
                    data.update(await self._calls(conn, b, search, after, before))
                if part is None:
                    rej = await conn.fetch(Q.ui_batch_rejected_page, b["id"], rafter, REJECTED_PER_PAGE + 1)
                    data["rejected_rows"] = rej[:REJECTED_PER_PAGE]
                    more = len(rej) > REJECTED_PER_PAGE
                    data["rejected_next"] = rej[REJECTED_PER_PAGE - 1]["line"] if more else None
                    data["rafter"] = rafter
                    data["flash"] = self._batch_flash(q)
            if part == "summary":
                return self.page(request, "_batch_summary.html", **data)
            if part == "calls":
                return self.page(request, "_batch_calls.html", **data)
            return self.page(request, "batch.html", **data)

        @r.post("/ui/batches/{batch_id}/cancel")
        async def cancel(request: Request, batch_id: str, s: Sess) -> Response:
            fields = await self.small_form(request)
            self.check_csrf(s, fields.get("csrf"))
            now = self.ctx.clock.now()
            async with self.ctx.pool.acquire() as conn, conn.transaction():
                b = await self._batch(conn, batch_id)
                ended = await moves.cancel_batch(conn, b["id"], now, "console")
            observe.ended(ended)  # counted in dialer_call_outcomes like an API cancel
            return RedirectResponse(f"/ui/batches/{b['id']}?cancelled={len(ended)}", status_code=303,
                                    headers=SECURITY_HEADERS)

        @r.get("/ui/batches/{batch_id}/report.json")
        async def report(batch_id: str, s: Sess) -> Response:
            async with self.ctx.pool.acquire() as conn:
                b = await self._batch(conn, batch_id)
            dest = downloads.temp_path(self.state_dir, ".json")
            ing = FileIngestor(self.ctx.pool, self.ctx.settings, self.ctx.clock)
            await downloads.report_json(ing, b, dest)
            return self._file(dest, f"{downloads.base_name(b)}.report.json", "application/json")

        @r.get("/ui/batches/{batch_id}/results.csv")
        async def results_csv(batch_id: str, s: Sess) -> Response:
            return await self._results(batch_id, ".csv", "text/csv; charset=utf-8", downloads.results_csv)

        @r.get("/ui/batches/{batch_id}/results.xlsx")
        async def results_xlsx(batch_id: str, s: Sess) -> Response:
            return await self._results(batch_id, ".xlsx", downloads.XLSX_TYPE, downloads.results_xlsx)

        # ---- upload ----------------------------------------------------------------------
        @r.get("/ui/upload")
        async def upload_form(request: Request, s: Sess) -> Response:
            return self._upload_page(request)

        @r.post("/ui/upload")
        async def upload(request: Request, s: Sess) -> Response:
            return await self._upload(request, s)

        # ---- targets ---------------------------------------------------------------------
        @r.get("/ui/targets")
        async def targets(request: Request, s: Sess) -> Response:
            ts = await target_views(self.ctx)
            comp = self.ctx.settings.compliance
            q = request.query_params
            flash = None
            if q.get("done") in ("paused", "resumed") and q.get("target") in self.ctx.settings.targets:
                flash = Flash("ok", f"Target {q.get('target')} {q.get('done')}.")
            data: dict[str, Any] = dict(targets=ts, compliance=comp, nav="targets", title="Targets",
                                        flash=flash, active=True, live_url="/ui/targets?part=list")
            if q.get("part") == "list":
                return self.page(request, "_targets_list.html", **data)
            return self.page(request, "targets.html", **data)

        async def set_paused(request: Request, name: str, s: Session, paused: bool) -> Response:
            fields = await self.small_form(request)
            self.check_csrf(s, fields.get("csrf"))
            if name not in self.ctx.settings.targets:
                raise UiError(404, f"There is no target {name!r}.")
            await pause_or_resume(self.ctx.pool, name, paused, "console", self.ctx.clock.now())
            if not paused:
                self.ctx.wake_dispatch()
            done = "paused" if paused else "resumed"
            return RedirectResponse(f"/ui/targets?{urlencode({'done': done, 'target': name})}",
                                    status_code=303, headers=SECURITY_HEADERS)

        @r.post("/ui/targets/{name}/pause")
        async def pause(request: Request, name: str, s: Sess) -> Response:
            return await set_paused(request, name, s, True)

        @r.post("/ui/targets/{name}/resume")
        async def resume(request: Request, name: str, s: Sess) -> Response:
            return await set_paused(request, name, s, False)

        # ---- do-not-call ---------------------------------------------------------------------
        @r.get("/ui/dnc")
        async def dnc(request: Request, s: Sess) -> Response:
            return await self._dnc_page(request)

        @r.post("/ui/dnc")
        async def dnc_add(request: Request, s: Sess) -> Response:
            return await self._dnc_add(request, s)

        @r.post("/ui/dnc/remove")
        async def dnc_remove(request: Request, s: Sess) -> Response:
            fields = await self.small_form(request)
            self.check_csrf(s, fields.get("csrf"))
            st = self.ctx.settings
            region = st.targets[st.default_target].default_region
            e164, why = phones.normalise(fields.get("number", ""), region)
            back = {"q": fields.get("q", "")}
            if e164 is None:
                return await self._dnc_page(request, Flash("error", f"Nothing removed: {why}."), status=422)
            async with self.ctx.pool.acquire() as conn:
                gone = await conn.fetchval(Q.dnc_delete, e164)
            back["removed" if gone else "missing"] = e164
            return RedirectResponse(f"/ui/dnc?{urlencode(back)}", status_code=303, headers=SECURITY_HEADERS)

        return r

    # -- pieces of pages ----------------------------------------------------------------------
    def _login_page(self, request: Request, nxt: str, flash: Flash | None, status: int = 200) -> Response:
        nonce = self.sessions.new_login_nonce()
        resp = self.page(request, "login.html", status, nxt=nxt, flash=flash,
                         login_csrf=self.sessions.login_csrf(nonce), title="Log in",
                         no_tokens=not self._tokens())
        resp.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_TTL_S, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
        return resp

    @staticmethod
    def _batch_flash(q: Any) -> Flash | None:
        if q.get("cancelled") is not None:
            n = _int(q.get("cancelled"))
            return Flash("ok", f"Batch cancelled: {n:,} call{'s' if n != 1 else ''} not yet sent "
                               "will not be dialed. Calls already with the provider finish normally.")
        up = q.get("upload")
        name = (q.get("name") or "the file")[:200]
        if up == "ingested":
            return Flash("ok", f"{name} was received. Its report is below; the calls start now.")
        if up == "duplicate":
            return Flash("warn", f"{name} has the same content as this batch, received before: "
                                 "nothing was ingested again.")
        return None

    async def _calls(self, conn: Any, b: Any, search: str, after: int, before: int) -> dict[str, Any]:
        pattern = e164 = None
        if search:
            pattern = f"%{_escape_like(search)}%"
            region = self.ctx.settings.targets[b["target"]].default_region \
                if b["target"] in self.ctx.settings.targets else "US"
            e164, _ = phones.normalise(search, region)
        limit = CALLS_PER_PAGE
        if before:
            rows = await conn.fetch(Q.ui_batch_calls_before, b["id"], before, limit + 1, pattern, e164)
            has_prev = len(rows) > limit
            rows = rows[1:] if has_prev else rows
            has_next = True
        else:
            rows = await conn.fetch(Q.ui_batch_calls_after, b["id"], after, limit + 1, pattern, e164)
            has_next = len(rows) > limit
            rows = rows[:limit]
            has_prev = after > 0
        base = {"q": search} if search else {}
        live = dict(base, part="calls")
        if after:
            live["after"] = str(after)
        if before:
            live["before"] = str(before)
        prev_q = urlencode(dict(base, before=rows[0]["id"])) if has_prev and rows else None
        next_q = urlencode(dict(base, after=rows[-1]["id"])) if has_next and rows else None
        return {
            "calls": rows,
            "prev_url": f"?{prev_q}#calls" if prev_q else None,
            "next_url": f"?{next_q}#calls" if next_q else None,
            "first_url": f"?{urlencode(base)}#calls" if (after or before) else None,
            "calls_live_url": f"/ui/batches/{b['id']}?{urlencode(live)}",
        }

    def _file(self, path: Path, filename: str, media_type: str) -> Response:
        ascii_name = "".join(ch if 32 < ord(ch) < 127 and ch not in '"\\;' else "_" for ch in filename)
        disposition = f'attachment; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(filename)}'
        return FileResponse(
            path, media_type=media_type,
            headers={"Content-Disposition": disposition, "Cache-Control": "no-store",
                     "X-Content-Type-Options": "nosniff"},
            background=BackgroundTask(_unlink, path),
        )

    async def _results(self, batch_id: str, ext: str, media_type: str,
                       write: Callable[[Any, uuid.UUID, Path], Awaitable[int]]) -> Response:
        dest = downloads.temp_path(self.state_dir, ext)
        try:
            async with self.ctx.pool.acquire() as conn:
                b = await self._batch(conn, batch_id)
                await write(conn, b["id"], dest)
        except BaseException:
            _unlink(dest)
            raise
        return self._file(dest, f"{downloads.base_name(b)}.results{ext}", media_type)

    def _upload_page(self, request: Request, flash: Flash | None = None, status: int = 200,
                     target: str | None = None, outcome: FileOutcome | None = None) -> Response:
        st = self.ctx.settings
        return self.page(request, "upload.html", status, nav="upload", title="Upload leads", flash=flash,
                         targets=sorted(st.targets), selected=target or st.default_target,
                         limit_mb=st.max_body_mb, inbox=str(st.inbox), outcome=outcome)

    async def _upload(self, request: Request, s: Session) -> Response:
        st = self.ctx.settings

        def vet(fields: dict[str, str], filename: str) -> None:
            self.check_csrf(s, fields.get("csrf") or request.headers.get("x-csrf-token"))
            if detect_format(filename) is None:
                raise FormError(415, f"{filename}: only .csv, .xlsx, .json, .ndjson and .jsonl files "
                                     "can be uploaded")

        if self.ctx.draining:  # intake has stopped: the daemon is shutting down
            msg = "The daemon is shutting down and takes no new files. Try again once it is back."
            return self._upload_page(request, Flash("error", msg), status=503)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":  # not a file upload at all: check the token, then say so
            fields = await self.small_form(request)
            self.check_csrf(s, fields.get("csrf"))
            msg = "Send the file with the upload form (multipart/form-data)."
            return self._upload_page(request, Flash("error", msg), status=415)
        try:
            form = await read_form(request, self.state_dir / "uploads" / ".incoming", st.max_body_bytes,
                                   before_file=vet)
        except FormError as e:
            return self._upload_page(request, Flash("error", e.message), status=e.status)
        try:
            self.check_csrf(s, form.fields.get("csrf") or request.headers.get("x-csrf-token"))
            target = form.fields.get("target") or st.default_target
            if form.file_path is None or form.filename is None:
                msg = "Choose a file first (or drop one on the box)."
                return self._upload_page(request, Flash("error", msg), status=422, target=target)
            if target not in st.targets:
                return self._upload_page(request, Flash("error", f"There is no target {target!r}."),
                                         status=422)
            return await self._ingest_upload(request, form, target)
        finally:
            form.discard()

    async def _ingest_upload(self, request: Request, form: StreamedForm, target: str) -> Response:
        assert form.file_path is not None and form.filename is not None
        ing = FileIngestor(self.ctx.pool, self.ctx.settings, self.ctx.clock)
        outcome = await ing.ingest(form.file_path, target, source="api", name=form.filename)
        if outcome.kind == "busy":
            return self._upload_page(request, Flash("warn", "The same file is being received right now "
                                                            "(another upload or the inbox). Look for it on "
                                                            "the Batches page in a moment."),
                                     status=409, target=target)
        if outcome.kind == "failed" or outcome.batch_id is None:
            msg = f"{form.filename} was not ingested: {outcome.error}. Nothing from it will be dialed."
            return self._upload_page(request, Flash("error", msg), status=422, target=target, outcome=outcome)
        # keep it, with its report beside it, as the inbox does with processed files
        day = self.ctx.clock.now().astimezone().date().isoformat()
        dest_dir = self.state_dir / "uploads" / day
        await anyio.Path(dest_dir).mkdir(parents=True, exist_ok=True)
        dest = unique_path(dest_dir, form.filename)
        await ing.write_report(outcome, dest.with_name(dest.name + ".report.json"))
        await anyio.Path(form.file_path).replace(dest)
        form.file_path = None
        if outcome.kind == "ingested":
            if outcome.sha256:
                await ing.mark_filed(outcome.sha256, dest)
            self.ctx.wake_dispatch()
        q = urlencode({"upload": outcome.kind, "name": form.filename})
        return RedirectResponse(f"/ui/batches/{outcome.batch_id}?{q}", status_code=303,
                                headers=SECURITY_HEADERS)

    async def _dnc_page(self, request: Request, flash: Flash | None = None, status: int = 200,
                        report: dict[str, Any] | None = None) -> Response:
        st = self.ctx.settings
        q = request.query_params
        search = (q.get("q") or "").strip()[:40]
        after = (q.get("after") or "")[:20]
        digits = "".join(ch for ch in search if ch.isdigit())
        region = st.targets[st.default_target].default_region
        if search:
            e164, _ = phones.normalise(search, region)
            pattern = f"{e164}%" if e164 else f"%{digits}%"
        else:
            pattern = "%"
        async with self.ctx.pool.acquire() as conn:
            rows = await conn.fetch(Q.ui_dnc_page, pattern, after, DNC_PER_PAGE + 1)
            total = int(await conn.fetchval(Q.ui_dnc_total))
        more = len(rows) > DNC_PER_PAGE
        rows = rows[:DNC_PER_PAGE]
        if flash is None and q.get("removed"):
            flash = Flash("ok", f"{q.get('removed')} was removed from the do-not-call list.")
        elif flash is None and q.get("missing"):
            flash = Flash("warn", f"{q.get('missing')} was not on the do-not-call list.")
        base = {"q": search} if search else {}
        return self.page(
            request, "dnc.html", status, nav="dnc", title="Do-not-call list", flash=flash, rows=rows,
            total=total, search=search, region=region, report=report,
            next_url=f"?{urlencode(dict(base, after=rows[-1]['e164']))}" if more and rows else None,
            first_url=f"?{urlencode(base)}" if after else None,
            unusable_search=bool(search) and not digits,
        )

    async def _dnc_add(self, request: Request, s: Session) -> Response:
        from dialer.intake import dnc as dnc_lists

        st = self.ctx.settings

        def vet(fields: dict[str, str], filename: str) -> None:
            self.check_csrf(s, fields.get("csrf") or request.headers.get("x-csrf-token"))

        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        form = StreamedForm()
        try:
            if ctype == "multipart/form-data":
                form = await read_form(request, self.state_dir / "uploads" / ".incoming", st.max_body_bytes,
                                       before_file=vet)
            else:
                form.fields = await self.small_form(request, st.max_body_bytes)
        except FormError as e:
            return await self._dnc_page(request, Flash("error", e.message), status=e.status)
        try:
            self.check_csrf(s, form.fields.get("csrf") or request.headers.get("x-csrf-token"))
            region = (form.fields.get("region") or st.targets[st.default_target].default_region).upper()
            if not phones.is_supported_region(region):
                flash = Flash("error", f"Unknown region {region!r}.")
                return await self._dnc_page(request, flash, status=422)
            text = form.fields.get("numbers", "")
            if not text.strip() and form.file_path is None:
                return await self._dnc_page(request, Flash(
                    "error", "Type or paste numbers (one per line), or choose a file."), status=422)
            now = self.ctx.clock.now()
            reports = []
            if text.strip():
                reports.append(await dnc_lists.import_bytes(self.ctx.pool, text.encode(), region=region,
                                                            source="console", now=now))
            if form.file_path is not None:
                reports.append(await dnc_lists.import_file(self.ctx.pool, form.file_path, region=region,
                                                           source="console", now=now))
        finally:
            form.discard()
        total: dict[str, Any] = {}
        for rep in reports:
            for k, v in rep.as_dict().items():
                total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
        ok = total.get("added", 0) + total.get("updated", 0)
        kind = "ok" if ok and not total.get("invalid") else ("warn" if ok else "error")
        flash = Flash(kind, f"{total.get('added', 0):,} added, {total.get('updated', 0):,} already listed, "
                            f"{total.get('invalid', 0):,} not valid"
                            + (f"; {total['cancelled_calls']:,} calls not yet sent were cancelled"
                               if total.get("cancelled_calls") else "") + ".")
        return await self._dnc_page(request, flash, report=total)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _esc(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def mount(app: FastAPI, ctx: AppContext) -> Console:
    """Serve the console under ``/ui/`` (and ``/`` → ``/ui/``), outside the OpenAPI schema."""
    console = Console(ctx)
    app.state.ui = console
    app.include_router(console.routes())
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
    app.add_exception_handler(UiError, console.on_error)
    return console
