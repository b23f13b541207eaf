"""Limits below HTTP, on connections: uvicorn bounds the idle time between requests
(keep-alive) but not the time a client takes to send a request's head, so clients that
open connections and send half a head (or nothing) kept them, and their file descriptors,
for good: 21,000 of them left the daemon without descriptors for its inbox, spool and
database. Here a head must be complete within ``head_timeout_s`` of the connection
opening or of the previous answer; and a connection beyond ``max_connections`` is closed
as it arrives, so the descriptors the daemon needs stay free. A head is also bounded in
bytes (the parser would buffer a head of any size before the app could refuse it).

Bodies are not timed here: a console upload over a slow link may take long, and its size
is bounded where it is read (``http/bodies.py``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 15.0
MAX_HEAD_BYTES = 64 * 1024  # the raw head; http/limits.py refuses more than 32 KB of headers
WARN_EVERY_S = 10.0


def default_max_connections() -> int:
    """Half the descriptors the process may open: the rest is for PostgreSQL, the inbox,
    the spool and the intake worker's pipes."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, (soft if soft != resource.RLIM_INFINITY else 65536) // 2)


def guarded(head_timeout_s: float = HEAD_TIMEOUT_S,
            max_connections: int | None = None) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with these limits (``uvicorn.Config(http=...)``)."""
    cap = max_connections or default_max_connections()
    return type("GuardedHttp", (_Guarded,), {"head_timeout_s": head_timeout_s, "max_connections": cap})


_BODY = b'{"error":{"code":"headers_too_large","message":"request headers are too large","details":null}}'
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
              b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY)


class _Guarded(HttpToolsProtocol):
    head_timeout_s = HEAD_TIMEOUT_S
    max_connections = 10_000
    _warned_at = 0.0  # class-wide: one warning per WARN_EVERY_S, whatever the flood

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._lingering = False  # answered early: the rest of that body still coming in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._warn_full()
            transport.close()
            return
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._head_timer is not None and not self._lingering
        super().data_received(data)
        if waiting and self._head_timer is not None:  # the head is still not complete
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._disarm_head()
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm_head()
        self._lingering = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request
            # unless the app answered before the body was all in (a 413, a 401): the rest of
            # it is no head (not counted), and must end within the same time (uvicorn's
            # keep-alive timer stops at its first byte)
            self._arm_head()
            self._lingering = self.cycle.more_body

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._lingering and not self.transport.is_closing():
            self._lingering = False
            self._arm_head()  # the body of a request answered early is in: the next head is due

    def _arm_head(self) -> None:
        self._disarm_head()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - _Guarded._warned_at >= WARN_EVERY_S:
            _Guarded._warned_at = now
            log.warning("HTTP connections at their limit: new ones are closed as they arrive",
                        extra={"max_connections": self.max_connections})
