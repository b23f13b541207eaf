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


async def test_batches_overlap_and_a_calls_callbacks_still_apply_in_arrival_order(pool: asyncpg.Pool) -> None:
    """A batch held up (here: its call locked by another transaction) does not hold back
    the callbacks of other calls, while the next callback of the held call waits for it."""
    held, other = await queued_calls(pool, 2)
    batcher = CallbackBatcher(pool, SystemClock().now, db_down=DB_DOWN)
    async with pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE", held)
        connect = asyncio.ensure_future(batcher.apply(
            1, held, "connect", CallbackData(raw={}, agent="alice", refs=[held]), State.ASSIGNED))
        await asyncio.sleep(0)  # its batch starts, and waits for the lock
        terminal = asyncio.ensure_future(batcher.apply(
            1, held, "terminal", CallbackData(raw={}, agent="alice", disposition="ANSWERED", refs=[held]),
            State.ANSWERED))
        done = await asyncio.wait_for(batcher.apply(
            1, other, "terminal", CallbackData(raw={}, agent="bob", disposition="ANSWERED", refs=[other]),
            State.ANSWERED), 10)
        assert done is not None and done.result == "applied"
        assert not connect.done() and not terminal.done()
        await tx.commit()
    first, second = await asyncio.wait_for(asyncio.gather(connect, terminal), 10)
    assert first is not None and second is not None
    assert (first.result, second.result) == ("applied", "applied")
    async with pool.acquire() as conn:
        moves = await conn.fetch("SELECT from_state, to_state, applied FROM call_events WHERE call_id = $1 "
                                 "ORDER BY id", held)
    assert [(m["from_state"], m["to_state"], m["applied"]) for m in moves] == [
        ("queued", "assigned", True), ("assigned", "answered", True)]
