"""What the listener answers while the daemon waits for its database at start-up.

The socket is bound before the database is reached, so a daemon (re)started during a
database outage keeps its pid and loses no callback (SPEC §8): ``/healthz`` 200,
``/readyz`` 503 naming what it waits for, ``/metrics`` (``dialer_db_up`` 0, the spool's
depth), provider callbacks acknowledged from the spool, every other path 503 with
``Retry-After`` (401 first for /v1 without the token). Once the database is migrated the daemon swaps
in the full app (``Switch``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dialer.errors import DialerError
from dialer.http.auth import TokenCheck
from dialer.metrics import CONTENT_TYPE

_NOT_READY = orjson.dumps({"error": {"code": "not_ready", "message": "starting: waiting for the database",
                                     "details": None}})


class Switch:
    """An ASGI app whose target can be replaced while the server runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def starting_app(waiting_for: Callable[[], str], edge: Sequence[Route],
                 metrics: Callable[[], Awaitable[bytes]], token: TokenCheck) -> Starlette:
    """``waiting_for()``: why the database is not there yet (the last error), for /readyz;
    ``metrics()``: the daemon's exposition (``dialer_db_up`` 0, the spool's depth); ``token``:
    the API's check, so /v1 still answers 401 without one (SPEC §4)."""

    async def healthz(request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok", "checks": {}}), media_type="application/json")

    async def readyz(request: Request) -> Response:
        body = {"status": "not ready", "checks": {"database": waiting_for(), "draining": "no"}}
        return Response(orjson.dumps(body), 503, media_type="application/json")

    async def not_ready(request: Request) -> Response:
        path = request.url.path
        if path == "/v1" or path.startswith("/v1/"):
            try:
                await token(request)
            except DialerError as e:
                body = orjson.dumps({"error": {"code": e.code, "message": e.message, "details": None}})
                return Response(body, e.http_status, media_type="application/json",
                                headers={"WWW-Authenticate": "Bearer"})
        return Response(_NOT_READY, 503, media_type="application/json", headers={"Retry-After": "5"})

    async def prometheus(request: Request) -> Response:
        return Response(await metrics(), media_type=CONTENT_TYPE)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[
        *edge,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/{path:path}", not_ready, methods=methods),
    ])
