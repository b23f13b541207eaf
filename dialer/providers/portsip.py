"""PortSIP PBX call queues: who is READY in a call queue, and how many callers wait.

The REST API lives under ``https://<pbx>:8887/api`` with ``Authorization: Bearer``.
Collections are paged with ``skip``/``top`` (``top`` at most 100) and answer
``{"count", "items"}``. We use:

* ``GET /api/call_queues`` — resolve a configured queue by id, name or extension number;
* ``GET /api/call_queues/{id}/agents`` — the queue's agents (no status in the list);
* ``GET /api/call_queues/{id}/agents/{extension}`` — one agent, with ``status``
  (``READY``, ``NOT_READY``, ``WRAP_UP``, ``BREAK``, ``LUNCH``, ``LOGGED_IN``, ``LOGGED_OUT``);
* ``GET /api/call_queues/{id}/waiting`` — the callers waiting (its length is the depth).

``PortSipReadiness`` polls these for every target mapped in ``[portsip.queues]``: the
``READY`` agents of the queue (mapped to our usernames) are the target's ready agents.
The result is kept in PostgreSQL (``agent_state``); with several instances one of them
polls per interval and all of them pace on what it saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import httpx

from dialer.clock import Clock
from dialer.config import Settings
from dialer.providers import agent_state
from dialer.providers.agent_state import SourceView

log = logging.getLogger(__name__)

PAGE = 100  # the API's maximum ``top``
MAX_PAGES = 1000
READY = "READY"

# (provider, endpoint, HTTP status or None, seconds) — for request metrics
RequestObserver = Callable[[str, str, int | None, float], None]


class PortSipError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)


class PortSipClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/api"):
            root = root[: -len("/api")]
        self.base_url = root
        self.on_request = on_request
        self._client = httpx.AsyncClient(
            base_url=root,
            headers={"authorization": f"Bearer {token}", "accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _get(self, endpoint: str, path: str, params: dict[str, Any] | None = None) -> Any:
        start = time.perf_counter()
        status: int | None = None
        try:
            resp = await self._client.get(path, params=params)
            status = resp.status_code
        except httpx.HTTPError as e:
            raise PortSipError(f"PortSIP {endpoint}: {type(e).__name__}: {e}") from None
        finally:
            if self.on_request:
                self.on_request("portsip", endpoint, status, time.perf_counter() - start)
        if status in (401, 403):
            raise PortSipError(f"PortSIP refused the token (HTTP {status}) on {endpoint}", status)
        if not 200 <= resp.status_code < 300:
            raise PortSipError(f"PortSIP {endpoint}: HTTP {status}: {resp.text[:300]}", status)
        try:
            return resp.json()
        except ValueError:
            raise PortSipError(f"PortSIP {endpoint}: answer is not JSON", status) from None

    async def _paged(self, endpoint: str, path: str) -> list[dict[str, Any]]:
        """Every item of a collection, ``top`` = 100 at a time.

        Stops at ``count`` when the server gives it, on a short page, or when a server
        that ignores ``skip`` sends the same page again.
        """
        items: list[dict[str, Any]] = []
        skip = 0
        previous: list[Any] | None = None
        for _ in range(MAX_PAGES):
            body = await self._get(endpoint, path, {"skip": skip, "top": PAGE})
            page = body.get("items") if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise PortSipError(f"PortSIP {endpoint}: answer has no items list")
            if previous is not None and page and page == previous:
                break
            items.extend(p for p in page if isinstance(p, dict))
            count = body.get("count")
            skip += len(page)
            if len(page) < PAGE or (isinstance(count, int) and skip >= count):
                break
            previous = page
        return items

    async def call_queues(self) -> list[dict[str, Any]]:
        return await self._paged("call_queues", "/api/call_queues")

    async def queue_agents(self, queue_id: str) -> list[dict[str, Any]]:
        return await self._paged("queue_agents", f"/api/call_queues/{queue_id}/agents")

    async def agent(self, queue_id: str, extension: str) -> dict[str, Any]:
        body = await self._get("queue_agent", f"/api/call_queues/{queue_id}/agents/{extension}")
        if not isinstance(body, dict):
            raise PortSipError("PortSIP queue_agent: answer is not an object")
        return body

    async def agent_status(self, queue_id: str, extension: str) -> str:
        return str((await self.agent(queue_id, extension)).get("status") or "").upper()

    async def waiting(self, queue_id: str) -> list[dict[str, Any]]:
        return await self._paged("queue_waiting", f"/api/call_queues/{queue_id}/waiting")

    async def resolve_queue(self, ref: str) -> str:
        """The id of the call queue whose id, name or extension number is ``ref``."""
        queues = await self.call_queues()
        for key in ("id", "extension_number", "name"):
            for q in queues:
                if str(q.get(key, "")) == ref and q.get("id"):
                    return str(q["id"])
        raise PortSipError(f"PortSIP has no call queue with id, name or extension number {ref!r}")


class PortSipReadiness:
    """The READY agents of each target's PortSIP call queue, refreshed by polling and kept in
    PostgreSQL (``agent_state``): one instance polls, every instance paces on the result."""

    name = "portsip"

    def __init__(self, settings: Settings, clock: Clock, client: PortSipClient, pool: asyncpg.Pool, *,
                 status_concurrency: int = 8) -> None:
        self.settings = settings
        self.clock = clock
        self.client = client
        self.pool = pool
        self.status_concurrency = status_concurrency
        self._queue_ids: dict[str, str] = {}  # configured ref -> id
        self._failing: dict[str, str] = {}  # queue ref -> last error, while failing
        self.polls = 0
        self.errors = 0

    # -- what the selector reads --------------------------------------------------------------
    async def view(self, conn: asyncpg.Connection, target: str) -> SourceView:
        """The target's READY agents, callers waiting and when, at the last poll that worked."""
        s = await agent_state.read(conn, self.name, target)
        return SourceView(s.ready, s.heard_at, s.depth)

    def silence_default(self, target: str) -> float | None:
        return max(30.0, 4 * self.settings.portsip.poll_s)

    # -- polling -----------------------------------------------------------------------------
    async def _poll_queue(self, ref: str) -> tuple[set[str], int]:
        qid = self._queue_ids.get(ref)
        if qid is None:
            qid = await self.client.resolve_queue(ref)
            self._queue_ids[ref] = qid
        agents = await self.client.queue_agents(qid)
        extensions = [str(a["extension_number"]) for a in agents if a.get("extension_number")]
        statuses: dict[str, str] = {}
        limiter = anyio.Semaphore(self.status_concurrency)
        failures: list[PortSipError] = []

        async def one(ext: str) -> None:
            async with limiter:
                try:
                    statuses[ext] = await self.client.agent_status(qid, ext)
                except PortSipError as e:
                    if e.status == 404:  # left the queue between the two requests
                        return
                    failures.append(e)

        async with anyio.create_task_group() as tg:
            for ext in extensions:
                tg.start_soon(one, ext)
        if failures:
            raise failures[0]
        waiting = await self.client.waiting(qid)
        return {ext for ext, st in statuses.items() if st == READY}, len(waiting)

    async def poll_once(self, conn: asyncpg.Connection | None = None) -> dict[str, bool]:
        """Poll every mapped queue once and save what it says for every instance (on ``conn``:
        the poll's turn, when given); returns target -> whether its poll succeeded. A failed
        poll saves nothing: the last view stays, and ages towards the static fallback."""
        if conn is None:
            async with self.pool.acquire() as c:
                return await self.poll_once(c)
        self.polls += 1
        by_ref: dict[str, list[str]] = {}
        for target, q in self.settings.portsip.queues.items():
            by_ref.setdefault(q.queue, []).append(target)
        outcome: dict[str, bool] = {}
        for ref, targets in by_ref.items():
            try:
                ready_ext, depth = await self._poll_queue(ref)
            except PortSipError as e:
                self.errors += 1
                if e.status == 404:
                    self._queue_ids.pop(ref, None)  # re-resolve: the queue may have been re-created
                if self._failing.get(ref) != e.message:
                    log.error("PortSIP poll failed", extra={"queue": ref, "error": e.message})
                self._failing[ref] = e.message
                outcome.update(dict.fromkeys(targets, False))
                continue
            if self._failing.pop(ref, None) is not None:
                log.info("PortSIP poll works again", extra={"queue": ref})
            now = self.clock.now()
            for target in targets:
                mapping = self.settings.portsip.queues[target].agents
                await agent_state.save_poll(conn, self.name, target, now,
                                            ready={mapping.get(ext, ext) for ext in ready_ext}, depth=depth)
                outcome[target] = True
        return outcome
