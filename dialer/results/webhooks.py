"""Signed result webhooks, delivered from a durable outbox.

Each ended call of a batch that named a ``result_webhook_url`` gets one POST whose
body is signed: ``X-Dialer-Signature: sha256=<hex HMAC-SHA256 of the body>``. Delivery
is retried with exponential backoff for up to 24 h; rows are claimed with
``FOR UPDATE SKIP LOCKED`` so several instances share the work. A URL that may never
receive one (not http(s), or a host that is or resolves to a non-public address, see
``destinations``) fails at once, with the reason as its last error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import timedelta

import anyio
import asyncpg
import httpx

from dialer.clock import Clock
from dialer.results import destinations
from dialer.signing import body_signature
from dialer.store.queries import Q

log = logging.getLogger(__name__)

MAX_AGE = timedelta(hours=24)
LEASE = timedelta(seconds=60)  # a claimed row is invisible to others this long


class WebhookSender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        secret: bytes,
        clock: Clock,
        *,
        timeout_s: float = 10.0,
        batch: int = 50,
        rng: random.Random | None = None,
        on_result: Callable[[str], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: bool = False,
    ) -> None:
        self.pool = pool
        self.secret = secret
        self.clock = clock
        self.batch = batch
        self.timeout_s = timeout_s
        self.allow_private = allow_private  # Settings.webhooks_to_private
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self.on_result = on_result
        self.http = httpx.AsyncClient(timeout=timeout_s, transport=transport,
                                      headers={"user-agent": "dialer-webhooks/1"})

    async def close(self) -> None:
        await self.http.aclose()

    def backoff(self, attempts: int) -> timedelta:
        base = min(3600.0, 5.0 * 2 ** max(0, attempts - 1))
        return timedelta(seconds=base * (0.75 + self.rng.random() / 2))

    async def deliver_due(self) -> int:
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q.webhook_claim, now, now + LEASE, self.batch)
        if not rows:
            return 0
        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(self._one, row)
        return len(rows)

    async def _post(self, url: str, body: bytes) -> httpx.Response:
        """POST to the first route that connects (see ``destinations.routes``)."""
        with anyio.fail_after(self.timeout_s):
            routes = await destinations.routes(url, allow_private=self.allow_private)
        headers = {"content-type": "application/json",
                   "x-dialer-signature": body_signature(self.secret, body)}
        for route in routes[:-1]:
            try:
                return await self.http.post(route.url, content=body, headers={**headers, **route.headers},
                                            extensions=route.extensions)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue  # the other address family may connect
        last = routes[-1]
        return await self.http.post(last.url, content=body, headers={**headers, **last.headers},
                                    extensions=last.extensions)

    async def _one(self, row: asyncpg.Record) -> None:
        body: bytes = row["body"]
        status: int | None = None
        error: str | None = None
        refused = False
        try:
            status = (await self._post(row["url"], body)).status_code
        except destinations.Refused as e:
            error, refused = f"refused: {e.message}"[:500], True
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"[:500]
        except (OSError, TimeoutError) as e:  # the name did not resolve (in time)
            error = f"DNS lookup failed: {e or type(e).__name__}"[:500]
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            if status is not None and 200 <= status < 300:
                await conn.execute(Q.webhook_done, row["id"], status, now)
                self._count("delivered")
                return
            nxt = now + self.backoff(row["attempts"])
            give_up = refused or nxt - row["created_at"] > MAX_AGE
            await conn.execute(Q.webhook_retry, row["id"], status, error or f"HTTP {status}", nxt, give_up)
        self._count("failed" if give_up else "retry")
        if refused:
            log.warning("result webhook refused", extra={"webhook": row["id"], "error": error})
        elif give_up:
            log.error("result webhook given up after 24 h", extra={"webhook": row["id"], "status": status})

    def _count(self, result: str) -> None:
        if self.on_result:
            self.on_result(result)

    async def run(self, idle_s: float = 1.0) -> None:
        while True:
            try:
                n = await self.deliver_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("webhook delivery pass failed", extra={"error": str(e)})
                n = 0
            if n == 0:
                await anyio.sleep(idle_s)
