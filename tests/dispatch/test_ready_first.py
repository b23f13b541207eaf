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
    """Rows of a batch still coming in are in the dispatch index but not dispatchable: a fill
    reads the calls older than them as usual, and only a bounded stretch of the newer ones
    (the old query read all 30,000 incoming rows at every fill)."""
    clock = FakeClock(datetime(2026, 6, 2, 18, 0, tzinfo=UTC))  # inside everyone's hours
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([f"+1415{5550000 + i:07d}" for i in range(3)])  # ready, priority 0
        async with pool.acquire() as conn:
            incoming = await conn.fetchval("INSERT INTO batches (target, source, state) "
                                           "VALUES ('sales', 'inbox', 'receiving') RETURNING id")
            await conn.execute(
                "INSERT INTO calls (batch_id, target, line, e164, priority) "
                "SELECT $1, 'sales', g, '+1212' || (5550000 + g)::text, 5 FROM generate_series(1, $2) g",
                incoming, INCOMING)
        # posted while the file is still coming in: newer than its rows, ahead of them (9)
        # and behind them (0, looked at again once the batch is finalised)
        await st.post(["+14155559999"], priority=9)
        await st.post(["+14155559998"])
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE calls")
            query, args = await outbox.candidates_query(conn, "sales", clock.now(), 24)
            plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + query, *args)
            old = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + Q.dispatch_candidates,
                                      "sales", clock.now(), 24)
        read = sum(n["Actual Rows"] for n in _nodes(plan[0]["Plan"]) if n.get("Index Name") == "calls_dispatchable")
        assert read <= outbox.INCOMING_LOOK + 24, read
        assert sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in _nodes(old[0]["Plan"])
                   if n.get("Index Name") == "calls_dispatchable") > INCOMING  # what it read before

        await st.dispatcher.tick()  # room for 6: the four ready calls the fill can see
        async with pool.acquire() as conn:
            sent = {r["e164"] for r in await conn.fetch("SELECT e164 FROM calls WHERE submitted_at IS NOT NULL")}
        assert sent == {"+14155559999", *(f"+1415{5550000 + i:07d}" for i in range(3))}, sent
        async with pool.acquire() as conn:  # the file's rows all in: the batch is finalised
            await conn.execute("UPDATE batches SET state = 'ingested' WHERE id = $1", incoming)
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM calls WHERE submitted_at IS NOT NULL")
        assert n == 6  # two more: the incoming rows now, by priority


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for sub in plan.get("Plans", []) for n in _nodes(sub))]
