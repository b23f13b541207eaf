"""The settle of a send and the callback batch lock a chunk's calls in one order (id), so
they cannot deadlock; a transaction that loses a race anyway is run again where it happened."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dialer.clock import SystemClock
from dialer.lifecycle.states import State
from dialer.store.queries import Q
from dialer.store.retry import transient
from tests.dispatch.test_dispatch import TARGETS, numbers
from tests.stack import running_stack

# What settled a chunk before: one UPDATE that locked the chunk's calls in whatever order
# the plan met them.
OLD_SETTLE = "UPDATE calls SET state = $3, updated_at = now() WHERE chunk_id = $1 AND state = $2 RETURNING id"


async def _chunk_with_calls_out_of_order(pool: asyncpg.Pool, make_settings: Any) -> tuple[int, int, int]:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(2))
        await st.dispatcher.fill_all()
    async with pool.acquire() as conn:
        a, b = [r["id"] for r in await conn.fetch("SELECT id FROM calls ORDER BY id")]
        chunk = await conn.fetchval("SELECT chunk_id FROM calls WHERE id = $1", a)
        # a new version of the lower id lands after the higher one in the heap, so a scan
        # meets b first — the order the callback batch (id order) does not use
        await conn.execute("UPDATE calls SET updated_at = updated_at WHERE id = $1", a)
        await conn.execute("ANALYZE calls")
    return chunk, a, b


async def _race(pool: asyncpg.Pool, settle: Any, a: int, b: int) -> None:
    """A callback batch holds call ``a`` while the settle starts, then wants ``b``."""
    async with pool.acquire() as cb:
        tx = cb.transaction()
        await tx.start()
        try:
            await cb.execute("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE", a)
            task = asyncio.create_task(settle())
            await _wait_until_blocked(pool)
            await cb.execute("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE", b)
        except BaseException:
            await tx.rollback()
            raise
        else:
            await tx.commit()
        await task


async def _wait_until_blocked(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for _ in range(500):
            if await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE wait_event_type = 'Lock' AND datname = current_database()"):
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the settle never waited for the callback's lock")


async def test_the_old_settle_deadlocks_against_a_callback_batch(pool: asyncpg.Pool, make_settings: Any) -> None:
    """The scenario has teeth: the statement it replaced deadlocks here."""
    chunk, a, b = await _chunk_with_calls_out_of_order(pool, make_settings)

    async def old_settle() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(OLD_SETTLE, chunk, State.SUBMITTING, State.QUEUED)

    with pytest.raises(asyncpg.DeadlockDetectedError):
        await _race(pool, old_settle, a, b)


async def test_the_settle_locks_in_id_order_and_never_deadlocks(pool: asyncpg.Pool, make_settings: Any) -> None:
    chunk, a, b = await _chunk_with_calls_out_of_order(pool, make_settings)
    moved: list[int] = []

    async def settle() -> None:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(Q.chunk_calls_moved, chunk, State.SUBMITTING, State.QUEUED,
                                    SystemClock().now(), False)
            moved.extend(r["id"] for r in rows)

    await _race(pool, settle, a, b)
    assert sorted(moved) == [a, b]


async def test_a_transaction_that_lost_a_race_is_run_again(pool: asyncpg.Pool, make_settings: Any) -> None:
    chunk, a, b = await _chunk_with_calls_out_of_order(pool, make_settings)
    tries = 0

    async def old_settle() -> None:
        nonlocal tries
        tries += 1
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(OLD_SETTLE, chunk, State.SUBMITTING, State.QUEUED)

    # whichever side PostgreSQL picks as the victim, the work gets done
    try:
        await _race(pool, lambda: transient(old_settle, "test settle"), a, b)
    except asyncpg.DeadlockDetectedError:  # the callback side was the victim: it retries too
        await transient(old_settle, "test settle")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'queued'") == 2
    assert tries >= 1
