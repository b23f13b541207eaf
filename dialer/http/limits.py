"""Request-head limits in front of the whole app (plain ASGI: nothing to pay per request
beyond a sum). Bodies are limited where they are read (API 50 MB, callbacks 256 KB).

The provider callbacks, the one path taken thousands of times a second, are handed
from here straight to their route (``fast``): FastAPI's middleware stack and router
cost about a sixth of the daemon's CPU per callback (bench/callbacks.py --profile).
Those routes answer every error themselves; an exception in one reaches uvicorn, which
logs it and answers 500, as FastAPI's error middleware would. Except a client gone before
its body was in (``ClientDisconnect``, on any route): one info line here, not a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dialer.errors import TooLarge

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
_REFUSED = b'{"error":{"code":"headers_too_large","message":"request headers are too large","details":null}}'


class HeaderLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES, max_count: int = MAX_HEADERS,
                 fast: Sequence[Route] = (), fast_prefix: str = "/callbacks/") -> None:
        self.app = app
        self.fast = list(fast)
        self.fast_prefix = fast_prefix
        self.max_bytes = max_bytes
        self.max_count = max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if len(headers) > self.max_count or sum(len(k) + len(v) for k, v in headers) > self.max_bytes:
                await send({"type": "http.response.start", "status": 431,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(_REFUSED)).encode()),
                                        (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": _REFUSED})
                return
            try:
                if self.fast and scope["path"].startswith(self.fast_prefix):
                    for route in self.fast:
                        match, child = route.matches(scope)
                        if match is Match.FULL:  # not PARTIAL (another method): the app answers 405
                            await route.handle({**scope, **child}, receive, send)
                            return
                await self.app(scope, receive, send)
            except ClientDisconnect:
                # the client went away (or was cut off: http/connections.py) before its body
                # was in: nothing to answer, and no fault of ours (uvicorn would log a traceback)
                log.info("request body cut short: the client went away",
                         extra={"method": scope.get("method"), "path": scope.get("path")})
            return
        await self.app(scope, receive, send)


def _size(n: int) -> str:
    """A limit as people write it: 50 MB, 64 KB (not "0 MB")."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            v = n / scale
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) past ``limit`` bytes: declared or streamed."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is over the {_size(limit)} limit", {"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLarge(f"body is over the {_size(limit)} limit", {"limit": limit})
        chunks.append(part)
    return b"".join(chunks)
