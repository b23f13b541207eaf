"""Group commit on a real PostgreSQL: one bad callback fails alone, an unreachable database
fails everyone (and they spool)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from dialer.clock import SystemClock
from dialer.config import Settings
from dialer.lifecycle.batcher import CallbackBatcher
from dialer.lifecycle.payload import CallbackData, decode, read
from dialer.lifecycle.service import DB_DOWN
from dialer.lifecycle.states import State
from dialer.store.database import create_pool
from tests.conftest import await_for
from tests.lifecycle.seeded import ended, queued_calls, refuse_agent, service, states


async def test_one_poison_callback_in_a_group_commit_fails_alone(pool: asyncpg.Pool, settings: Settings,
                                                                 tmp_path: Path) -> None:
    ids = await queued_calls(pool, 50)
    await refuse_agent(pool, "mallory")
    poison = ids[17]
    svc = service(pool, settings, tmp_path / "spool")
    # all fifty are queued before the batcher's first statement runs: one group commit
    answers = await asyncio.gather(
        *(svc.receive(1, "terminal", ended(cid, agent="mallory" if cid == poison else "alice"), "application/json")
          for cid in ids),
        return_exceptions=True)
    assert isinstance(answers[17], asyncpg.CheckViolationError)
    assert answers[:17] + answers[18:] == ["stored"] * 49  # acknowledged: 200
    got = await states(pool)
    assert got.pop(poison) == "queued"
    assert set(got.values()) == {"answered"}
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_events WHERE applied") == 49
    assert svc.spool.depth == 0
    svc.spool.close()


async def test_an_unreachable_database_reaches_every_caller_who_then_spools(db_url: str, settings: Settings,
                                                                           tmp_path: Path) -> None:
    """Every connection of the pool is held, so acquiring one times out."""
    small = await create_pool(db_url, min_size=1, max_size=1)
    try:
        ids = await queued_calls(small, 10)
        svc = service(small, settings, tmp_path / "spool")
        async with small.acquire():
            answers = await asyncio.gather(*(svc.receive(1, "terminal", ended(cid), "application/json")
                                             for cid in ids))
        assert answers == ["spooled"] * 10
        assert svc.spool.depth == 10
        assert await svc.replay_once() == 10  # the connection is back
        assert set((await states(small)).values()) == {"answered"}
        svc.spool.close()
    finally:
        await small.close()


async def test_the_batcher_alone_isolates_a_poison_item(pool: asyncpg.Pool) -> None:
    ids = await queued_calls(pool, 5)
    await refuse_agent(pool, "mallory")
    batcher = CallbackBatcher(pool, SystemClock().now, db_down=DB_DOWN)

    def cb(cid: int) -> CallbackData:
        return read(decode(ended(cid, agent="mallory" if cid == ids[2] else "alice"), "application/json"))

    out = await asyncio.gather(*(batcher.apply(1, cid, "terminal", cb(cid), State.ANSWERED)
                                 for cid in ids), return_exceptions=True)
    assert [type(o).__name__ for o in out] == ["Applied", "Applied", "CheckViolationError", "Applied", "Applied"]
    assert [o.result for o in out if not isinstance(o, BaseException)] == ["applied"] * 4



async def test_a_cancelled_caller_does_not_leave_the_rest_of_its_batch_unanswered(pool: asyncpg.Pool) -> None:
    """Answering a caller who is gone (cancelled: a shutdown) raised InvalidStateError in
    the batcher, and the callers after it in the batch waited forever."""
    first, second = await queued_calls(pool, 2)
    batcher = CallbackBatcher(pool, SystemClock().now, db_down=DB_DOWN)

    def answered(cid: int) -> CallbackData:
        return CallbackData(raw={}, agent="alice", disposition="ANSWERED", refs=[cid])

    async with pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE", first)  # the batch waits
        gone = asyncio.ensure_future(batcher.apply(1, first, "terminal", answered(first), State.ANSWERED))
        kept = asyncio.ensure_future(batcher.apply(1, second, "terminal", answered(second), State.ANSWERED))

        async def batch_waits_for_the_lock() -> bool:
            return bool(await pool.fetchval(  # not the locker: its transaction caches the view
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))

        await await_for(batch_waits_for_the_lock, 10, "the batch waiting for the locked call")
        gone.cancel()
        await tx.commit()
    result = await asyncio.wait_for(kept, 10)
    assert result is not None and result.result == "applied"
    assert set((await states(pool)).values()) == {"answered"}  # the cancelled one was applied too
