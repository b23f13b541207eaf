"""Limits below HTTP, on connections: uvicorn bounds the idle time between requests
(keep-alive) but not the time a client takes to send a request's head, so clients that
open connections and send half a head (or nothing) kept them, and their file descriptors,
for good: 21,000 of them left the daemon without descriptors for its inbox, spool and
database. Here a head must be complete within ``head_timeout_s`` of the connection
opening or of the previous answer; and a connection beyond ``max_connections`` is closed
as it arrives, so the descriptors the daemon needs stay free. A head is also bounded in
bytes (the parser would buffer a head of any size before the app could refuse it).

A body is timed too, while the app waits for it (its size is bounded where it is read,
``http/limits.py``): no byte of it for ``head_timeout_s`` and the request is cut (408 if
nothing was answered yet), as nginx's client_body_timeout; so a client that declares a
body and sends none, or stops halfway, holds nothing. And unless the app has vouched for
the request (``trust_body``: a valid API token, console session or callback token), the
whole body must be in within ``head_timeout_s`` of its head, so trickling a byte now and
then does not hold the login form either. A big upload over a slow link is authenticated
first, and keeps only the idle rule.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 15.0
MAX_HEAD_BYTES = 64 * 1024  # the raw head; http/limits.py refuses more than 32 KB of headers
WARN_EVERY_S = 10.0


TRUSTED = "dialer_body_trusted"  # in the request's scope["state"], shared by the app's scope copies


def trust_body(scope: Scope) -> None:
    """The request is authenticated: its body may take as long as it keeps coming."""
    scope.setdefault("state", {})[TRUSTED] = True


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
_LATE_BODY = b'{"error":{"code":"timeout","message":"the request body was not sent in time","details":null}}'
_LATE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
         b"content-length: " + str(len(_LATE_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _LATE_BODY)
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
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_last = 0.0  # loop time of the last body byte (or of the app starting to wait)
        self._body_due = 0.0  # loop time by which an untrusted body must be all in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._warn_full()
            transport.close()
            return
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head()
        self._disarm_body()
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
        c = self.cycle
        if c is not None and c.more_body and not c.response_complete:  # the app awaits a body
            self._body_last = self.loop.time()
            if self._body_timer is None and not self.transport.is_closing():  # its head just came
                self._body_due = self._body_last + self.head_timeout_s
                self._arm_body()

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
        self._disarm_body()
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

    def _arm_body(self) -> None:
        at = self._body_last + self.head_timeout_s
        if not self.cycle.scope["state"].get(TRUSTED):
            at = min(at, self._body_due)
        self._body_timer = self.loop.call_at(at, self._body_check)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        c = self.cycle
        if self.transport.is_closing() or not c.more_body or c.response_complete:
            return
        now = self.loop.time()
        trusted = c.scope["state"].get(TRUSTED)
        if not trusted and now >= self._body_due:
            self._body_late("not all in within the time allowed")
        elif c.body or self.flow.read_paused or c.waiting_for_100_continue:
            self._body_last = now  # the app is not waiting for more yet: no idle time counts
            self._arm_body()
        elif now - self._body_last >= self.head_timeout_s:
            self._body_late("stalled")
        else:
            self._arm_body()

    def _body_late(self, why: str) -> None:
        c = self.cycle
        log.debug("request body too slow: connection closed",
                  extra={"why": why, "path": c.scope.get("path"), "client": self.client})
        if not c.response_started and not self.pipeline:  # (queued: an earlier answer is going out)
            self.transport.write(_LATE)
        c.disconnected = True  # the app's answer, if any, is dropped; its receive() sees the end
        c.message_event.set()
        self.transport.close()

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - _Guarded._warned_at >= WARN_EVERY_S:
            _Guarded._warned_at = now
            log.warning("HTTP connections at their limit: new ones are closed as they arrive",
                        extra={"max_connections": self.max_connections})
