"""Numbered plain-SQL migrations shipped in the package (``dialer/sql/``), applied in order
under an advisory lock.

They are package data read through ``importlib.resources``, so a wheel install finds them
as a checkout does (top-level ``sql/`` is a symlink to the same directory). A migration set
that is missing or empty is an error: a daemon with no tables must not start as if current.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

from dialer.errors import DialerError

SQL_DIR: Traversable = files("dialer").joinpath("sql")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant shared by every instance: two daemons starting together apply once.
MIGRATION_LOCK = 7_403_001


class MigrationsMissing(DialerError):
    """The install has no migrations where the package keeps them: a broken build or install."""

    code = "migrations_missing"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Traversable


def available(sql_dir: Traversable = SQL_DIR) -> list[Migration]:
    """The migrations in ``sql_dir``, by version; raises when there are none."""
    if not sql_dir.is_dir():
        raise MigrationsMissing(f"no migration directory at {sql_dir}: the package is incomplete")
    found = []
    for path in sorted(sql_dir.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".sql"):
            continue
        m = _NAME.match(path.name)
        if not m:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    if not found:
        raise MigrationsMissing(f"no NNNN_name.sql migration in {sql_dir}: the package is incomplete")
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


async def pending(conn: asyncpg.Connection, sql_dir: Traversable = SQL_DIR) -> list[Migration]:
    done = await applied(conn)
    return [m for m in available(sql_dir) if m.version not in done]


async def migrate(conn: asyncpg.Connection, sql_dir: Traversable = SQL_DIR) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; returns what was applied."""
    every = available(sql_dir)  # a broken install fails here, before the database is touched
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_TABLE)
        done = await applied(conn)
        todo = [m for m in every if m.version not in done]
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
