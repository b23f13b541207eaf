"""A database that cannot take a callback right now: the callback is spooled and answered
200 (Ryng would give up after two retries), then replayed when it can."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from dialer.config import Settings
from dialer.store.database import create_pool
from tests.lifecycle.seeded import ended, endpoint, queued_calls, service, states


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def test_too_many_connections_spools_the_callback(pool: asyncpg.Pool, db_url: str, settings: Settings,
                                                        tmp_path: Path) -> None:
    """The daemon's role is at its connection limit (a real server refusal, SQLSTATE 53300)."""
    (a,) = await queued_calls(pool, 1)
    role, password = f"dialer_{uuid.uuid4().hex[:8]}", "pw-0123456789"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CONNECTION LIMIT 1")
        await conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    dsn = as_role(db_url, role, password)
    try:
        other = await asyncpg.connect(dsn)  # someone else holds the role's only connection
        limited = await create_pool(dsn, min_size=0, max_size=2)
        try:
            svc = service(limited, settings, tmp_path / "spool")
            async with endpoint(svc, settings) as ep:
                r = await ep.post(ended(a))
            assert r.status_code == 200, r.text
            assert ep.answered == ["spooled"]
            assert svc.spool.depth == 1
            await other.close()
            assert await svc.replay_once() == 1
            assert await states(pool) == {a: "answered"}
            svc.spool.close()
        finally:
            await limited.close()
            if not other.is_closed():
                await other.close()
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP OWNED BY {role}")
            await conn.execute(f"DROP ROLE {role}")
