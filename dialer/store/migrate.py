"""Numbered plain-SQL migrations from ``sql/``, applied in order under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant shared by every instance: two daemons starting together apply once.
MIGRATION_LOCK = 7_403_001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def available(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migration files share a number")
    return found


_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def applied(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def pending(conn: asyncpg.Connection, sql_dir: Path = SQL_DIR) -> list[Migration]:
    done = await applied(conn)
    return [m for m in available(sql_dir) if m.version not in done]


async def migrate(conn: asyncpg.Connection, sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; returns what was applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_TABLE)
        todo = await pending(conn, sql_dir)
        for m in todo:
            async with conn.transaction():
                await conn.execute(m.path.read_text(encoding="utf-8"))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
        return todo
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
