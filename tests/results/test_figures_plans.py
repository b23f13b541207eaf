"""The figures of a batch (100,000 calls under DIALER_SLOW=1) are read through indexes: the batch's own rows
(``calls_batch_line``), each answered call's events (``call_events_call``), and a
target's pace from ``calls_dispatchable`` and ``calls_target_submitted`` — never a scan
of the whole calls table, however many other calls it holds."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from dialer.results import figures
from dialer.store.queries import Q

NOW = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
# the batch and the table around it in the same proportion either way; the full size
# (a 100,000-call batch among 1.2 million calls) under DIALER_SLOW=1
SLOW = os.environ.get("DIALER_SLOW") == "1"
BATCH = 100_000 if SLOW else 10_000
OLD_CALLS = 10 * BATCH


async def _seed(conn: asyncpg.Connection, target: str, n: int) -> object:
    """A batch of n calls: a third answered (each with its callback event), a third
    no-answer, a third still waiting; attempts spread over the last ten hours."""
    bid = await conn.fetchval("INSERT INTO batches (target, source, state, created_at) "
                              "VALUES ($1, 'api', 'ingested', $2) RETURNING id", target, NOW - timedelta(hours=10))
    await conn.execute(
        "INSERT INTO calls (batch_id, target, line, e164, timezone, state, submitted_at) "
        "SELECT $1, $2, g, '+1415' || (2000000 + g)::text, CASE WHEN g % 2 = 0 THEN 'America/New_York' END, "
        "       (ARRAY['answered', 'no_answer', 'pending'])[g % 3 + 1], "
        "       CASE WHEN g % 3 < 2 THEN $3::timestamptz - (g % 600) * interval '1 minute' END "
        "FROM generate_series(1, $4) g", bid, target, NOW, n)
    await conn.execute(
        "INSERT INTO call_events (call_id, at, kind, from_state, to_state, applied, payload) "
        "SELECT id, $2, 'callback_terminal', 'queued', 'answered', true, "
        "       jsonb_build_object('body', jsonb_build_object('talkTime', id % 100)) "
        "FROM calls WHERE batch_id = $1 AND state = 'answered'", bid, NOW)
    return bid


async def test_batch_figures_use_indexes(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        bid = await _seed(conn, "sales", BATCH)
        await _seed(conn, "other", BATCH)  # another target's calls must not be read
        await conn.execute(  # and a table of older calls dwarfs the batch, as in production
            "INSERT INTO calls (batch_id, target, line, e164, state, submitted_at, ended_at) "
            "SELECT gen_random_uuid(), 'sales', g, '+1415' || (3000000 + g)::text, 'answered', $1, $1 "
            "FROM generate_series(1, $2) g", NOW - timedelta(days=30), OLD_CALLS)
        await conn.execute("ANALYZE")
        scope = [bid]
        keys = [r["key"] for r in await conn.fetch(Q.figures_zone_keys, scope)]
        plans = {
            "totals": await _plan(conn, Q.figures_totals, scope, NOW - timedelta(minutes=15), NOW),
            "zone_keys": await _plan(conn, Q.figures_zone_keys, scope),
            "hours": await _plan(conn, Q.figures_hours, scope, keys, ["UTC"] * len(keys)),
            "pace": await _plan(conn, Q.figures_target_pace, "sales", NOW - timedelta(minutes=15), NOW),
        }
        await figures.for_batch(conn, bid, NOW)  # warm: the zone names are read once a process
        took = time.perf_counter()
        f = await figures.for_batch(conn, bid, NOW)
        took = time.perf_counter() - took
    print(f"figures of a {BATCH:,}-call batch among {OLD_CALLS + 2 * BATCH:,} calls: {took * 1000:.0f} ms")
    for name, plan in plans.items():
        assert "Seq Scan on calls" not in plan, (name, plan)
    for name in ("totals", "zone_keys", "hours"):
        assert "calls_batch_line" in plans[name], (name, plans[name])
    assert "call_events_call" in plans["totals"]
    assert "calls_dispatchable" in plans["pace"] and "calls_target_submitted" in plans["pace"]
    assert (f.leads, f.attempts, f.answered) == (BATCH, BATCH * 2 // 3 + 1, BATCH // 3)
    assert sum(h.attempts for h in f.hours) == f.attempts


async def _plan(conn: asyncpg.Connection, query: str, *args: object) -> str:
    rows = await conn.fetch("EXPLAIN " + query, *args)
    return "\n".join(r[0] for r in rows)
