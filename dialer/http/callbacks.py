"""Provider callback endpoints (plain Starlette: the hot path stays lean).

``POST /callbacks/ryng/{connect|terminal}/{token}``: 401 for a forged token (nothing
stored), 200 only once the event is durable (committed, or fsync'd to the spool),
503 if it cannot be made durable (Ryng then retries). A signed body that cannot be read
is made durable as bytes and answered 200 too: Ryng resends on anything else, and a
resent body would read no better.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dialer.http.connections import trust_body
from dialer.signing import read_token

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 256 * 1024
_OK = b'{"status":"ok"}'


class Receiver(Protocol):
    """Makes one callback durable: 'stored', 'spooled', or 'bad_payload' (an unreadable body,
    kept as bytes); raises OSError."""

    async def receive(self, chunk_id: int, kind: str, body: bytes, content_type: str) -> str: ...


def routes(
    service: Callable[[], Receiver | None],
    secret: bytes,
    count: Callable[[str, str, float], None] | None = None,
) -> list[Route]:
    """``count(kind, result, seconds)`` is told what every callback was answered (metrics)."""

    def counted(kind: str, result: str, t0: float) -> None:
        if count:
            count(kind, result, time.perf_counter() - t0)

    async def ryng(request: Request) -> Response:
        t0 = time.perf_counter()
        kind = request.path_params["kind"]
        if kind not in ("connect", "terminal"):
            return Response(b'{"error":{"code":"not_found","message":"unknown callback kind"}}', 404,
                            media_type="application/json")
        ident = read_token(secret, "chunk", request.path_params["token"])
        if ident is None or not ident.isdigit():
            counted(kind, "forged", t0)
            return Response(b'{"error":{"code":"unauthorized","message":"invalid callback token"}}',
                            401, media_type="application/json")
        trust_body(request.scope)
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > MAX_CALLBACK_BYTES:
                counted(kind, "too_large", t0)
                return Response(b'{"error":{"code":"too_large","message":"callback body too large"}}',
                                413, media_type="application/json")
        svc = service()
        if svc is None:
            return Response(b'{"error":{"code":"not_ready","message":"starting"}}', 503,
                            media_type="application/json")
        try:
            result = await svc.receive(int(ident), kind, body, request.headers.get("content-type", ""))
        except OSError as e:  # disk full while spooling: not durable, so not a 200
            counted(kind, "unavailable", t0)
            log.error("callback could not be made durable", extra={"error": str(e)})
            return Response(b'{"error":{"code":"unavailable","message":"try again"}}', 503,
                            media_type="application/json")
        counted(kind, result, t0)
        return Response(_OK, 200, media_type="application/json")

    async def unsigned(request: Request) -> Response:
        # a callback URL without its token is unsigned: refused and counted as forged
        kind = request.path_params["kind"]
        counted(kind, "forged", time.perf_counter())
        return Response(b'{"error":{"code":"unauthorized","message":"callback URL is not signed"}}',
                        401, media_type="application/json")

    return [Route("/callbacks/ryng/{kind}/{token}", ryng, methods=["POST"]),
            Route("/callbacks/ryng/{kind}", unsigned, methods=["POST"]),
            Route("/callbacks/ryng/{kind}/", unsigned, methods=["POST"])]
