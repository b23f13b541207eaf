"""Every named query is used by the product, and SQL lives in queries.sql only."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from dialer.store.queries import Q

PACKAGE = Path(__file__).resolve().parents[2] / "dialer"


def _sources() -> str:
    return "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))


def test_every_named_query_is_used() -> None:
    src = _sources()
    unused = [n for n in Q.names() if not re.search(rf"\bQ\.{n}\b", src)]
    assert unused == []


def test_no_sql_statement_lives_outside_the_queries_file() -> None:
    # a string literal that starts like a statement; the migrator's bookkeeping is the exception
    stmt = re.compile(r"[\"']{1,3}\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|WITH \w+ AS)\b")
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if stmt.search(p.read_text()) and p.name != "migrate.py"]
    assert found == []


async def test_the_database_accepts_exactly_the_moves_of_the_state_table(pool: asyncpg.Pool) -> None:
    import asyncpg

    from dialer.lifecycle.states import State, allowed_moves

    allowed = set(allowed_moves())
    async with pool.acquire() as conn:
        assert {(r["from_state"], r["to_state"]) for r in await conn.fetch("SELECT * FROM call_moves")} == allowed
        for a in State:
            for b in State:
                if a == b:
                    continue
                async with conn.transaction():
                    cid = await conn.fetchval(
                        "INSERT INTO calls (batch_id, target, line, state) "
                        "VALUES (gen_random_uuid(), 'sales', 1, $1) RETURNING id", a.value)
                    try:
                        await conn.execute("UPDATE calls SET state = $2 WHERE id = $1", cid, b.value)
                        moved = True
                    except asyncpg.CheckViolationError as e:
                        moved = False
                        assert f"{a.value} -> {b.value} is not an allowed move" in str(e)
                    assert moved == ((a.value, b.value) in allowed), (a, b)
        # and a state no code knows is refused outright
        import pytest

        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO calls (batch_id, target, line, state) "
                               "VALUES (gen_random_uuid(), 'sales', 1, 'ringing')")


def test_only_the_door_writes_calls() -> None:
    """Every named query that changes ``calls`` is run from lifecycle/moves.py alone (the
    callback batch from the batcher, which is the same door for many callbacks at once)."""
    import re as _re

    text = (PACKAGE / "store" / "queries.sql").read_text()
    parts = _re.split(r"^-- name: ([a-z_0-9]+)\s*$", text, flags=_re.M)
    writers = [n for n, body in zip(parts[1::2], parts[2::2], strict=True)
               if _re.search(r"\b(UPDATE calls|INSERT INTO calls|DELETE FROM calls)\b", body)]
    assert writers
    door = {PACKAGE / "lifecycle" / "moves.py", PACKAGE / "lifecycle" / "batcher.py"}
    outside = {(str(p.relative_to(PACKAGE)), n) for p in PACKAGE.rglob("*.py") if p not in door
               for n in writers if _re.search(rf"\bQ\.{n}\b", p.read_text())}
    assert outside == set()


async def test_the_pools_sessions_are_utc_whatever_the_databases_zone(db_url: str) -> None:
    """Times PostgreSQL renders as text (the callback batch's webhook bodies) read as
    Python's ``isoformat()`` does, even on a server or database set to another zone."""
    from dialer.store.database import create_pool

    conn = await asyncpg.connect(db_url)
    try:
        db = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{db}" SET TimeZone = \'America/New_York\'')
    finally:
        await conn.close()
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        text = await pool.fetchval("SELECT jsonb_build_object('t', '2026-12-06T12:00:00Z'::timestamptz)->>'t'")
    finally:
        await pool.close()
    assert text == "2026-12-06T12:00:00+00:00"


async def _colliding(conn: asyncpg.Connection, left: str, right: str) -> tuple[str, str]:
    """Two keys whose hashtext, each behind its prefix, is the same (a 32-bit birthday search)."""
    query = "SELECT i::text AS k, hashtext($1 || i) AS h FROM generate_series(1, 200000) i"
    seen = {r["h"]: r["k"] for r in await conn.fetch(query, left)}
    return next((seen[r["h"]], r["k"]) for r in await conn.fetch(query, right) if r["h"] in seen)


async def test_advisory_locks_of_different_kinds_never_wait_for_each_other(pool: asyncpg.Pool) -> None:
    # an inbox file's lock is held for a whole ingest: a number whose key hashed like it would
    # stall every claim and move on that number (and the dispatch fill holding its target's lock)
    async with pool.acquire() as holder, pool.acquire() as other:
        for left, right in [("dialer.file:", "dialer.number:"), ("", "")]:  # the old keys; the new
            sha, number = await _colliding(holder, left, right)
            assert await holder.fetchval(Q.file_try_lock, sha)
            try:
                async with other.transaction():
                    await other.execute("SET LOCAL lock_timeout = '5s'")
                    await other.execute(Q.number_locks, [number])  # a wait would time out
            finally:
                await holder.execute(Q.file_unlock, sha)
