"""Every error leaves the API as ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import socket
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from dialer.errors import DialerError

log = logging.getLogger(__name__)

# The database is away (refused, broken mid-request, restarting, out of connections, a
# standby mid-failover): the request may succeed in a moment, so 503 with Retry-After, as
# while the daemon starts (starting.py), never a bare 500. Not every OSError: a file
# error is a fault of its own, not the database's; nor asyncpg's InterfaceError, which is
# mostly a misuse ("another operation is in progress"): a bug is a 500, not a retry.
DB_AWAY: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,  # a connect or a pool acquire that timed out
    socket.gaierror,
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError: closed mid-operation
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InternalClientError,
    asyncpg.ReadOnlySQLTransactionError,
)
RETRY_AFTER_S = 5


def db_away(exc: BaseException) -> bool:
    """``exc`` says the database is away: one of ``DB_AWAY``, or the InterfaceError asyncpg
    raises on a connection that closed under the request (a transaction's exit after the
    server went: "the underlying connection is closed"), which hides the first error."""
    return isinstance(exc, DB_AWAY) or (isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc))


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's own class of that name is deprecated)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> ORJSONResponse:
    return ORJSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    return [{"field": _loc(e.get("loc", ())), "message": e.get("msg", "")} for e in errors]


def install(app: FastAPI) -> None:
    @app.exception_handler(DialerError)
    async def _dialer(_: Request, exc: DialerError) -> ORJSONResponse:
        headers = ({"WWW-Authenticate": "Bearer"} if exc.http_status == 401
                   else {"Retry-After": str(RETRY_AFTER_S)} if exc.http_status == 503 else None)
        return error_response(exc.http_status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> ORJSONResponse:
        details = validation_details(list(exc.errors()))
        first = details[0] if details else {"field": "body", "message": "invalid"}
        return error_response(
            422, "invalid_request", f"{first['field']}: {first['message']}", details
        )

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def _text(request: Request, exc: Exception) -> Any:
        ui = getattr(request.app.state, "ui", None)
        path = request.url.path
        if ui is not None and (path == "/ui" or path.startswith("/ui/")):
            return await ui.unstorable(request)  # the console's page, not the API's JSON
        return error_response(422, "invalid", "text contains a character PostgreSQL cannot store "
                              "(such as NUL)", None)

    async def _away(request: Request, exc: Exception) -> Any:
        log.warning("request answered 503: the database is unreachable",
                    extra={"path": request.url.path, "error": type(exc).__name__})
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        ui = getattr(request.app.state, "ui", None)
        path = request.url.path
        if ui is not None and (path == "/ui" or path.startswith("/ui/")):
            page = await ui.unavailable(request)
            page.headers.update(headers)
            return page
        return error_response(503, "database_unavailable",
                              f"the database is unreachable right now; retry in {RETRY_AFTER_S} s",
                              None, headers)

    for kind in DB_AWAY:
        app.add_exception_handler(kind, _away)

    @app.exception_handler(asyncpg.InterfaceError)
    async def _interface(request: Request, exc: asyncpg.InterfaceError) -> Any:
        if db_away(exc):
            return await _away(request, exc)
        raise exc  # a misuse: a bug, the 500 it is

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        # every /v1/* call needs the token (SPEC §4), a path or method that does not exist too:
        # without it the answer is 401, so the API's shape is not shown to whoever asks
        check = getattr(request.app.state, "token_check", None)
        path = request.url.path
        ui = getattr(request.app.state, "ui", None)
        if ui is not None and exc.status_code in (404, 405) and (path == "/ui" or path.startswith("/ui/")):
            return await ui.no_route(request, exc.status_code)  # the console's page, not the API's JSON
        if check is not None and exc.status_code in (404, 405) and (path == "/v1" or path.startswith("/v1/")):
            try:
                await check(request)
            except DialerError as e:
                return error_response(e.http_status, e.code, e.message, e.details,
                                      {"WWW-Authenticate": "Bearer"})
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), None,
                              dict(exc.headers) if exc.headers else None)
