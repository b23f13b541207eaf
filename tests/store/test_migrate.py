from __future__ import annotations

import asyncio

import asyncpg

from dialer.store import migrate
from dialer.store.queries import Q
from tests.conftest import with_database


async def test_template_is_fully_migrated(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await migrate.pending(conn) == []
        versions = await migrate.applied(conn)
    assert versions == {m.version for m in migrate.available()}


async def test_two_migrators_at_once_apply_once(pg_server: str) -> None:
    admin = await asyncpg.connect(pg_server)
    await admin.execute("DROP DATABASE IF EXISTS race_db WITH (FORCE)")
    await admin.execute("CREATE DATABASE race_db")
    try:
        dsn = with_database(pg_server, "race_db")
        a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            ra, rb = await asyncio.gather(migrate.migrate(a), migrate.migrate(b))
            assert sorted(m.version for m in ra + rb) == [m.version for m in migrate.available()]
            n = await a.fetchval("SELECT count(*) FROM schema_migrations")
            assert n == len(migrate.available())
        finally:
            await a.close()
            await b.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS race_db WITH (FORCE)")
        await admin.close()


async def test_every_named_query_parses(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            # queries over the DNC import's temporary table need it to exist
            await conn.execute(Q.dnc_import_table)
            for name in Q.names():
                if name == "dnc_import_table":
                    continue
                try:
                    await conn.prepare(getattr(Q, name))
                except asyncpg.PostgresError as e:
                    raise AssertionError(f"query {name}: {e}") from e
