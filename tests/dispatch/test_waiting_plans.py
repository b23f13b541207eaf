"""Why isn't it dialing, at size: a target's waiting calls (1,000,000 under DIALER_SLOW=1)
are grouped by what holds them in one pass over ``calls_dispatchable`` — never a scan of
the whole calls table, however many ended calls and other targets' calls it holds. Prints
the time the endpoint's reading takes (the README quotes it); WAITING_ANALYZE=1 prints the
plan with its timings."""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from dialer.config import load_settings
from dialer.dispatch import waiting
from dialer.store.queries import Q

NOW = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
SLOW = os.environ.get("DIALER_SLOW") == "1"
WAITING = 1_000_000 if SLOW else 50_000


async def _seed(conn: asyncpg.Connection, target: str, n: int) -> None:
    """n waiting calls: 40 % pending, 30 % held by calling hours, 20 % recycle waits, 5 %
    callbacks, 5 % expiring within the hour; and as many ended calls."""
    bid = await conn.fetchval("INSERT INTO batches (target, source, state, created_at) "
                              "VALUES ($1, 'api', 'ingested', $2) RETURNING id", target, NOW - timedelta(hours=2))
    await conn.execute(
        "INSERT INTO calls (batch_id, target, line, e164, state, reason, hold_reason, not_before, expires_at) "
        "SELECT $1, $2, g, '+1415' || (2000000 + g)::text, "
        "       CASE WHEN g % 20 < 8 OR g % 20 = 19 THEN 'pending' WHEN g % 20 < 14 THEN 'scheduled' "
        "            ELSE 'retry_wait' END, "
        "       CASE WHEN g % 20 BETWEEN 14 AND 17 THEN 'no_answer' WHEN g % 20 = 18 THEN 'callback' END, "
        "       CASE WHEN g % 20 BETWEEN 8 AND 13 THEN 'calling_hours' END, "
        "       CASE WHEN g % 20 BETWEEN 8 AND 18 THEN $3::timestamptz + (g % 600) * interval '1 minute' END, "
        "       CASE WHEN g % 20 = 19 THEN $3::timestamptz + interval '30 minutes' END "
        "FROM generate_series(1, $4) g", bid, target, NOW, n)
    await conn.execute(
        "INSERT INTO calls (batch_id, target, line, e164, state, submitted_at, ended_at) "
        "SELECT $1, $2, g, '+1415' || (5000000 + g)::text, 'answered', $3, $3 "
        "FROM generate_series(1, $4) g", bid, target, NOW - timedelta(days=1), n)


async def test_waiting_reasons_read_the_dispatch_index(pool: asyncpg.Pool, tmp_path: object) -> None:
    s = load_settings(None, environ={}, overrides={"targets": {
        "sales": {"queue_id": "1", "agents": ["alice", "bob"], "calls_per_agent": 2}}})
    t = s.targets["sales"]
    async with pool.acquire() as conn:
        await _seed(conn, "sales", WAITING)
        await _seed(conn, "other", WAITING // 4)  # another target's calls must not be read
        await conn.execute("ANALYZE")
        plan = "\n".join(r[0] for r in await conn.fetch(
            ("EXPLAIN (ANALYZE, BUFFERS) " if os.environ.get("WAITING_ANALYZE") else "EXPLAIN ") + Q.waiting_counts, "sales", NOW, NOW + waiting.EXPIRY_HORIZON, None))
        took = []
        for _ in range(3):
            start = time.perf_counter()
            w = await waiting.for_target(conn, "sales", t, None, False, NOW)
            took.append(time.perf_counter() - start)
    ms = statistics.median(took) * 1000
    if os.environ.get("WAITING_ANALYZE"):
        print(plan)
    print(f"waiting reasons of {WAITING:,} waiting calls (and as many ended): {ms:.0f} ms (median of 3)")
    assert "Seq Scan on calls" not in plan and "calls_dispatchable" in plan, plan
    got = {r.reason: r.count for r in w.reasons if r.count}
    k = WAITING // 20
    assert got == {"ready": 4, "pacing": 9 * k - 4, "calling_hours": 6 * k, "recycle": 4 * k,
                   "scheduled_callback": k, "expired_soon": k}
    assert w.total == WAITING
