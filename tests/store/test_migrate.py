from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

import dialer
from dialer.store import migrate
from dialer.store.queries import Q
from tests.conftest import ROOT, with_database


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
            await conn.execute(Q.dnc_import_sorted)
            for name in Q.names():
                if name in ("dnc_import_table", "dnc_import_sorted"):
                    continue
                try:
                    await conn.prepare(getattr(Q, name))
                except asyncpg.PostgresError as e:
                    raise AssertionError(f"query {name}: {e}") from e


def test_migrations_ship_inside_the_package_and_top_level_sql_links_there() -> None:
    pkg = Path(str(migrate.SQL_DIR))
    assert pkg == Path(dialer.__file__).parent / "sql"
    assert [m.path.name for m in migrate.available()] == sorted(p.name for p in pkg.glob("*.sql"))
    # a symlink in git (mode 120000), so a clone has one directory, not two copies to keep in step
    assert (ROOT / "sql").is_symlink() and (ROOT / "sql").resolve() == pkg.resolve()


def test_a_missing_migration_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    where = tmp_path / "no_such_dir"
    with pytest.raises(migrate.MigrationsMissing, match=str(where)):
        migrate.available(where)


def test_an_empty_migration_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a migration")
    with pytest.raises(migrate.MigrationsMissing, match=str(tmp_path)):
        migrate.available(tmp_path)


async def test_migrating_with_no_migrations_fails_before_touching_the_database(
    empty_db: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        with pytest.raises(migrate.MigrationsMissing):
            await migrate.migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()
