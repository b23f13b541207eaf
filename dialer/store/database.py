"""One asyncpg pool, opened on the configured DSN or on the embedded server."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from dialer.config import Settings
from dialer.store import migrate as migrations
from dialer.store.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

# How long any statement may take (asyncpg's client-side command_timeout), unless its call
# says otherwise: statements over a whole lead batch or DNC import get more (store/limits.py)
COMMAND_TIMEOUT_S = 60.0


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )
    await conn.set_type_codec(
        "json", encoder=json.dumps, decoder=orjson.loads, schema="pg_catalog"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release: it would cost a round trip per callback. Safe because
    the daemon leaves no session state behind: settings are ``SET LOCAL``, session
    advisory locks are released in ``finally`` blocks, cursors live in transactions."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10,
                      command_timeout: float = COMMAND_TIMEOUT_S) -> asyncpg.Pool:
    # UTC sessions: times PostgreSQL renders as text (the callback batch's webhook bodies)
    # read as Python's isoformat() does, whatever the server's or database's zone
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        command_timeout=command_timeout,
        reset=_keep_session, server_settings={"TimeZone": "UTC"},
    )
    assert pool is not None
    return pool


class Database:
    """Where the data lives: an embedded server (when no DSN is set) and the pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.dsn = ""

    def resolve_dsn(self) -> str:
        """Start the embedded server if no DSN is configured (blocking: call in a thread)."""
        if self.settings.database_url is not None:
            self.dsn = self.settings.database_url.get_secret_value()
        else:
            self.embedded = EmbeddedPostgres(Path(self.settings.state_dir) / "postgres")
            self.dsn = self.embedded.start()
        return self.dsn

    async def open(self) -> asyncpg.Pool:
        import anyio

        if not self.dsn:
            await anyio.to_thread.run_sync(self.resolve_dsn)
        self.pool = await create_pool(self.dsn, max_size=self.settings.db_pool_size)
        return self.pool

    async def migrate(self) -> list[migrations.Migration]:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            return await migrations.migrate(conn)

    async def close(self, *, stop_embedded: bool = True, owner: bool = False) -> None:
        """Close the pool; stop the embedded server if we started it (or ``owner``: the
        daemon, which owns the server even when it found it left running by a crash)."""
        import anyio

        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.embedded is not None and stop_embedded and (owner or self.embedded.started_here):
            await anyio.to_thread.run_sync(self.embedded.stop)


def jsonable(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)
