"""Calls waiting for their callbacks, seeded straight into the database, and the service
that applies them: the callback path without dispatch or a provider in front of it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from starlette.applications import Starlette

from dialer.clock import SystemClock
from dialer.config import Settings
from dialer.dispatch.chunker import call_ref
from dialer.http import callbacks
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.service import CallbackService
from dialer.lifecycle.spool import Spool, Spooled
from dialer.signing import make_token
from tests.stack import free_port, serve

CHUNK = 1


async def queued_calls(pool: asyncpg.Pool, n: int, chunk_id: int = CHUNK) -> list[int]:
    """``n`` calls of one chunk the provider has taken (``queued``); their ids."""
    async with pool.acquire() as conn:
        bid = await conn.fetchval("INSERT INTO batches (target, source, state) VALUES ('sales', 'api', 'ingested') "
                                  "RETURNING id")
        await conn.execute("INSERT INTO chunks (id, target, token, state) VALUES ($1, 'sales', $2, 'sent') "
                           "ON CONFLICT (id) DO NOTHING", chunk_id, f"tok-{chunk_id}")
        rows = await conn.fetch(
            "INSERT INTO calls (batch_id, target, line, e164, state, chunk_id) "
            "SELECT $1, 'sales', g, '+1415' || (2000000 + g)::text, 'queued', $3 FROM generate_series(1, $2) g "
            "RETURNING id", bid, n, chunk_id)
    return sorted(r["id"] for r in rows)


async def refuse_agent(pool: asyncpg.Pool, agent: str) -> None:
    """A real constraint: the database refuses any callback that names this agent."""
    async with pool.acquire() as conn:
        await conn.execute(f"ALTER TABLE calls ADD CONSTRAINT no_{agent} CHECK (agent IS DISTINCT FROM '{agent}')")


def service(pool: asyncpg.Pool, settings: Settings, spool_dir: Path) -> CallbackService:
    return CallbackService(pool, SystemClock(), Dispositions(), Spool(spool_dir), settings=settings)


def ended(call_id: int, agent: str = "alice", **extra: Any) -> bytes:
    """A terminal callback body (JSON) for one call."""
    return orjson.dumps({"event": "terminated", "disposition": "ANSWERED", "agent": agent,
                         "customField10": call_ref(call_id), **extra})


def spooled(body: bytes, ctype: str = "application/json", chunk_id: int = CHUNK) -> Spooled:
    return Spooled("terminal", chunk_id, ctype, body, SystemClock().now().isoformat())


async def states(pool: asyncpg.Pool) -> dict[int, str]:
    async with pool.acquire() as conn:
        return {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM calls")}


class Endpoint:
    """Our callback endpoint over real HTTP, and what it answered (as metrics count it)."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.http = http
        self.answered: list[str] = []

    def count(self, kind: str, result: str, seconds: float) -> None:
        self.answered.append(result)

    async def post(self, body: bytes, ctype: str = "application/json") -> httpx.Response:
        return await self.http.post(self.url, content=body, headers={"content-type": ctype})


@contextlib.asynccontextmanager
async def endpoint(svc: CallbackService, settings: Settings, chunk_id: int = CHUNK) -> AsyncIterator[Endpoint]:
    secret = settings.secret()
    port = free_port()
    async with httpx.AsyncClient(timeout=30) as http:
        ep = Endpoint(f"http://127.0.0.1:{port}/callbacks/ryng/terminal/{make_token(secret, 'chunk', chunk_id)}",
                      http)
        async with serve(Starlette(routes=callbacks.routes(lambda: svc, secret, count=ep.count)), port):
            yield ep
