"""Ryng REST client: progressive-queue append and campaign creation.

Every send is classified so the outbox can decide safely:

* ``ok``        — 2xx: Ryng took the calls.
* ``retry``     — the request was certainly not processed (connection refused, connect
                  timeout, 429, 503): send again after a backoff.
* ``rejected``  — other 4xx: the provider refuses this body; never resend.
* ``unknown``   — the request may have been taken (500, 502, 504 and other 5xx: a
                  gateway or the app may have failed after queueing the calls; a read
                  timeout; a connection dropped mid-response): never resend blindly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson


@dataclass(slots=True)
class SendResult:
    kind: str  # ok | retry | rejected | unknown
    status: int | None
    body: Any
    retry_after_s: float | None = None
    error: str | None = None
    elapsed_s: float = 0.0
    endpoint: str = ""


# The longest Retry-After taken as given: a proxy's or a bug's "come back in a year" would
# stop every send of the instance; past it, the next send simply asks again.
MAX_RETRY_AFTER_S = 600.0


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:4000]


class RyngClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"x-access-token": token, "accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def append(self, queue_id: str, body: dict[str, Any]) -> SendResult:
        path = f"/rest-api/v1/progressive/queue/{queue_id}/calls"
        return await self._send("queue_append", path, content=orjson.dumps(body),
                                headers={"content-type": "application/json"})

    async def create_campaign(self, body: dict[str, Any]) -> SendResult:
        return await self._send("campaign", "/rest-api/v1/campaign", content=orjson.dumps(body),
                                headers={"content-type": "application/json"})

    async def create_campaign_sheet(self, sheet_csv: bytes, fields: dict[str, str],
                                    filename: str = "campaign-sheet.csv") -> SendResult:
        files = {"campaign-sheet": (filename, sheet_csv, "text/csv")}
        return await self._send("campaign_sheet", "/rest-api/v1/campaign", data=fields, files=files)

    async def _send(self, endpoint: str, path: str, **kwargs: Any) -> SendResult:
        start = time.perf_counter()
        try:
            resp = await self._client.post(path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            return SendResult("retry", None, None, error=f"{type(e).__name__}: {e}",
                              elapsed_s=time.perf_counter() - start, endpoint=endpoint)
        except httpx.TransportError as e:
            # the request may have been delivered: we cannot know whether Ryng took it
            return SendResult("unknown", None, None, error=f"{type(e).__name__}: {e}",
                              elapsed_s=time.perf_counter() - start, endpoint=endpoint)
        elapsed = time.perf_counter() - start
        status = resp.status_code
        body = _body(resp)
        if 200 <= status < 300:
            return SendResult("ok", status, body, elapsed_s=elapsed, endpoint=endpoint)
        if status in (429, 503):
            return SendResult("retry", status, body, _retry_after(resp.headers.get("retry-after")),
                              error=f"HTTP {status}", elapsed_s=elapsed, endpoint=endpoint)
        if status >= 500:
            return SendResult("unknown", status, body, error=f"HTTP {status}", elapsed_s=elapsed,
                              endpoint=endpoint)
        if status in (301, 302, 307, 308):
            # moved (http → https, another base URL): the request was not processed, and the
            # calls are not at fault; retried with backoff, so the breaker and its alert show it.
            # (A 303 answers a POST that *was* processed: like any other 3xx, it is uncertain.)
            where = resp.headers.get("location", "")
            return SendResult("retry", status, body, error=f"HTTP {status} redirect to {where[:200]!r}: "
                              "check DIALER_RYNG_BASE_URL", elapsed_s=elapsed, endpoint=endpoint)
        if 300 <= status < 400:
            return SendResult("unknown", status, body, error=f"HTTP {status}", elapsed_s=elapsed,
                              endpoint=endpoint)
        return SendResult("rejected", status, body, error=f"HTTP {status}", elapsed_s=elapsed,
                          endpoint=endpoint)
