"""Leads that may be called now are not kept waiting behind leads held until later.

Held leads (outside their calling hours, a re-dial not yet due) leave the due part of
``calls_dispatchable`` and come back when their time comes (``dispatch_release_due``), so
a fill never reads past them; and the fill loop goes on while fills only set leads aside,
reading further ahead each time (``outbox.Fill``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from dialer.clock import FakeClock
from dialer.dispatch import outbox
from dialer.store.queries import Q
from tests.stack import running_stack

# 20:30 in Dallas (inside 09:00-21:00), 21:30 in New York (outside: opens 13:00 UTC)
NOW = datetime(2026, 6, 2, 1, 30, tzinfo=UTC)
NY_OPENS = datetime(2026, 6, 2, 13, 0, tzinfo=UTC)
TARGET = {"queue_id": "1", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "09:00-21:00", "calls_per_agent": 2, "chunk_size": 4, "max_dispose_s": 0,
          "dedupe_window_h": 0}
HELD = 3_000


async def test_in_hours_leads_go_out_past_thousands_held_ahead_of_them(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(NOW)
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # no callback on its own
        # New York leads first (lower ids, a higher priority for half of them), then Dallas
        await st.post([f"+1212{5550000 + i:07d}" for i in range(HELD // 2)], priority=5)
        await st.post([f"+1212{6550000 + i:07d}" for i in range(HELD // 2)])
        await st.post([f"+1214{5550000 + i:07d}" for i in range(5)], priority=5)
        await st.dispatcher.tick()  # one tick: the old loop stopped at the first fill held entirely
        async with pool.acquire() as conn:
            sent = {r["e164"] for r in await conn.fetch("SELECT e164 FROM calls WHERE submitted_at IS NOT NULL")}
            held = await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'scheduled' "
                                       "AND not_before = $1", NY_OPENS)
            # the queue as a fill reads it now: the held leads are not read at all
            plan = await conn.fetchval(  # the pool decodes json
                "EXPLAIN (ANALYZE, FORMAT JSON) " + Q.dispatch_candidates, "sales", clock.now(), 50)
        assert len(sent) == 5 and all(e.startswith("+1214") for e in sent), sent  # room is 6
        assert held == HELD
        scan = _node(plan[0]["Plan"], "calls_dispatchable")
        assert scan["Actual Rows"] == 0 and scan.get("Rows Removed by Filter", 0) == 0, scan

        # the Dallas calls end; at 09:00 in New York the held leads are due, by priority
        async with pool.acquire() as conn:
            await conn.execute("UPDATE calls SET state = 'answered', ended_at = $1 "
                               "WHERE submitted_at IS NOT NULL", clock.now())
        clock.advance((NY_OPENS - clock.now()).total_seconds() + 1)
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            first = await conn.fetch("SELECT e164, priority, state FROM calls WHERE e164 LIKE '+1212%' "
                                     "AND submitted_at IS NOT NULL ORDER BY id")
            waiting = await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'scheduled'")
        assert len(first) == 6 and {r["priority"] for r in first} == {5}, first
        assert [r["e164"] for r in first] == [f"+1212{5550000 + i:07d}" for i in range(6)]  # in line order
        assert waiting == HELD - 6  # still scheduled, due: the next fills take them in turn


def _node(plan: dict[str, Any], index: str) -> dict[str, Any]:
    if plan.get("Index Name") == index:
        return plan
    for sub in plan.get("Plans", []):
        if (found := _node(sub, index)) is not None:
            return found
    return None  # type: ignore[return-value]


INCOMING = 30_000


async def test_a_batch_still_coming_in_is_not_walked_at_every_fill(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """Rows of a batch still coming in are in the dispatch index but not dispatchable: most
    fills read only the calls older than them; one every FULL_WALK_EVERY_S reads past them,
    so a call that came in meanwhile — even behind a batch that is never finalised — waits
    that long at most. (The old query read all 30,000 incoming rows at every fill.)"""
    clock = FakeClock(datetime(2026, 6, 2, 18, 0, tzinfo=UTC))  # inside everyone's hours
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([f"+1415{5550000 + i:07d}" for i in range(2)], priority=5)  # ready, older
        incoming = await _incoming(pool, INCOMING)
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE calls")
            first = await conn.fetchval(Q.receiving_first_id, "sales")
            older = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Q.dispatch_candidates_older,
                                        "sales", clock.now(), 24, first)
            every = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Q.dispatch_candidates,
                                        "sales", clock.now(), 24)
        buffers = [p[0]["Plan"]["Shared Hit Blocks"] + p[0]["Plan"]["Shared Read Blocks"] for p in (older, every)]
        assert buffers[0] < 50 < 300 < buffers[1], buffers  # pages read: the older calls' / all incoming rows'

        await st.post(["+14155559999"], priority=5)  # came in meanwhile, same priority
        await st.dispatcher.tick()  # the first fill reads past the incoming rows: all three sent
        sent = await _sent(pool)
        assert sent == {"+14155550000", "+14155550001", "+14155559999"}, sent
        await st.post(["+14155559998"], priority=9)
        await st.dispatcher.tick()  # within FULL_WALK_EVERY_S: the older calls only (none left)
        assert await _sent(pool) == sent
        clock.advance(outbox.FULL_WALK_EVERY_S)
        await st.dispatcher.tick()  # the batch is never finalised: the newer call still goes out
        assert await _sent(pool) == {*sent, "+14155559998"}
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM calls WHERE batch_id = $1 "
                                       "AND submitted_at IS NOT NULL", incoming) == 0


async def _incoming(pool: asyncpg.Pool, rows: int) -> Any:
    """A batch of ``rows`` priority-5 leads still coming in (its file being read); its id."""
    async with pool.acquire() as conn:
        incoming = await conn.fetchval("INSERT INTO batches (target, source, state) "
                                       "VALUES ('sales', 'inbox', 'receiving') RETURNING id")
        await conn.execute(
            "INSERT INTO calls (batch_id, target, line, e164, priority) "
            "SELECT $1, 'sales', g, '+1212' || (5550000 + g)::text, 5 FROM generate_series(1, $2) g",
            incoming, rows)
    return incoming


async def _sent(pool: asyncpg.Pool) -> set[str]:
    async with pool.acquire() as conn:
        return {r["e164"] for r in await conn.fetch("SELECT e164 FROM calls WHERE submitted_at IS NOT NULL")}


async def test_a_newer_call_goes_out_within_the_walk_period_even_behind_a_full_older_backlog(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """Older calls enough to fill every fill, a batch still coming in, and a priority-9
    lead posted meanwhile: the next fill that reads past the incoming rows (one every
    FULL_WALK_EVERY_S) finds it ahead of the backlog."""
    clock = FakeClock(datetime(2026, 6, 2, 18, 0, tzinfo=UTC))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([f"+1415{5550000 + i:07d}" for i in range(200)])  # older, priority 0
        await _incoming(pool, 3000)
        await st.dispatcher.tick()  # reads past them (the first fill since start)
        await st.post(["+14155559999"], priority=9)
        async with pool.acquire() as conn:  # room again: the calls sent so far end
            await conn.execute("UPDATE calls SET state = 'answered', ended_at = $1 "
                               "WHERE submitted_at IS NOT NULL", clock.now())
        clock.advance(outbox.FULL_WALK_EVERY_S)
        await st.dispatcher.tick()
        assert "+14155559999" in await _sent(pool)
