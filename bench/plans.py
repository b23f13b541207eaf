"""Plans of the hot queries over a big history: no sequential scan of calls on a hot path.

    python bench/plans.py [--history 10000000] [--keep] [--json]

One throwaway embedded PostgreSQL, migrated, with ``--history`` ended calls of target
``sales`` (``common.seed_history``: the past 30 days, 50 agents), then what a working day
adds on top: an ingested batch of 100,000 pending calls, 50 calls in flight (one per
agent, sent in one chunk, half of them on a call), 10 agents in wrap-up, and a batch of
100,000 rows being finalised (one in ten numbers called within the dedupe window).
``VACUUM (ANALYZE)``, then ``EXPLAIN (ANALYZE, BUFFERS)`` of each hot query with the
daemon's own text (``dialer/store/queries.sql``) and realistic parameters; writes run in a
transaction that is rolled back, so every query sees the same tables.

Printed per query: the plan, its execution time, and whether it scans ``calls``
sequentially (a check: ``Seq Scan on calls`` on a hot path fails it). Times are figures,
not limits: compare ``--history 0`` with the default to see them stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

LIVE = 100_000
AGENTS = [f"agent{i:02d}" for i in range(1, 51)]


async def _seed(dsn: str, history: int) -> dict[str, Any]:
    from dialer.store.database import create_pool

    await common.migrate(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as c:
            if history:
                async with c.transaction():
                    await common.seed_history(c, history)
            async with c.transaction():
                live, fresh = uuid.uuid4(), uuid.uuid4()
                await c.execute("INSERT INTO batches (id, target, source, state, ingested_at) "
                                "VALUES ($1, 'sales', 'cli', 'ingested', now())", live)
                await c.execute("INSERT INTO batches (id, target, source, state) "
                                "VALUES ($1, 'sales', 'cli', 'receiving')", fresh)
                await c.execute(
                    "INSERT INTO calls (batch_id, target, line, raw_number, e164, priority, fields) "
                    "SELECT $1, 'sales', g, e, e, g % 10, jsonb_build_object('first_name', 'N' || g % 20) "
                    "FROM generate_series(1, $2) g, LATERAL (SELECT '+1415' || (2000000 + g) AS e) x",
                    live, LIVE)
                # the batch being finalised: one number in ten from the last days of history
                await c.execute(
                    "INSERT INTO calls (batch_id, target, line, raw_number, e164) "
                    "SELECT $1, 'sales', g, e, e FROM generate_series(1, $2) g, LATERAL (SELECT CASE "
                    "WHEN g % 10 = 0 AND $3 > 0 THEN '+19' || lpad(($3 - g)::text, 9, '0') "
                    "ELSE '+1650' || (2000000 + g) END AS e) x",
                    fresh, LIVE, history)
                chunk = int(await c.fetchval(
                    "INSERT INTO chunks (target, token, state, rows) VALUES ('sales', 'x', 'sent', 50) RETURNING id"))
                # 50 calls in flight, one per agent: the first 25 on a call, the rest queued
                await c.execute(
                    "UPDATE calls SET state = CASE WHEN n <= 25 THEN 'connected' ELSE 'queued' END, "
                    "chunk_id = $2, offered_to = a, agent = CASE WHEN n <= 25 THEN a END, "
                    "submitted_at = now() "
                    "FROM (SELECT id AS cid, row_number() OVER (ORDER BY id) AS n FROM calls "
                    "      WHERE batch_id = $1 ORDER BY id LIMIT 50) s, "
                    "LATERAL (SELECT 'agent' || lpad(n::text, 2, '0') AS a) x WHERE id = cid",
                    live, chunk)
                # 10 agents in wrap-up: their calls ended a second ago
                await c.execute(
                    "UPDATE calls SET state = 'answered', ended_at = now() - interval '1 second', "
                    "agent = 'agent' || (40 + line % 10), chunk_id = $2 "
                    "WHERE batch_id = $1 AND line BETWEEN 1001 AND 1010", live, chunk)
                in_flight = [r["id"] for r in await c.fetch(
                    "SELECT id FROM calls WHERE chunk_id = $1 AND state IN ('queued', 'connected') ORDER BY id",
                    chunk)]
        return {"live": live, "fresh": fresh, "chunk": chunk, "in_flight": in_flight}
    finally:
        await pool.close()


def _queries(ctx: dict[str, Any], now: datetime) -> list[tuple[str, str, tuple[Any, ...], str]]:
    """(name in queries.sql, where it runs, parameters, why it is hot)."""
    from dialer.lifecycle.states import allowed_moves

    allowed = [f"{a}>{b}" for a, b in allowed_moves()]
    ids = ctx["in_flight"][:20]
    n = len(ids)
    cb = (ids, [ctx["chunk"]] * n, ["answered"] * n, ["agent01"] * n, ["ANSWERED"] * n, [True] * n,
          [None] * n, ["callback_terminal"] * n, [{}] * n, list(range(n)), now, allowed)
    return [
        ("dispatch_release_due", "dispatch, every fill", ("sales", now, 5000), "held calls now due"),
        ("dispatch_candidates", "dispatch, every fill", ("sales", now, 500), "the next chunk's calls"),
        ("target_pacing", "dispatch, every fill", ("sales", 1000, now - timedelta(seconds=5)),
         "pacing: in flight by agent, wrap-up"),
        ("chunk_recheck_rows", "dispatch, every send", (ctx["chunk"], now), "send-time re-check"),
        ("chunk_taken", "dispatch, every send", (ctx["chunk"], now, 200, {}, "bench"), "a 2xx answer"),
        ("attempts_since", "dispatch, caps", (["+14152000001", "+19000000001"], now - timedelta(days=1), []),
         "attempt caps"),
        ("callback_apply_batch", "callbacks, every batch of 20", cb, "terminal callbacks"),
        ("call_by_chunk_number", "callbacks without our reference", (ctx["chunk"], ["+14152000001"]),
         "callback matching"),
        ("finalise_dedupe_target", "ingest, once per batch", (ctx["fresh"], "sales", now - timedelta(days=7)),
         "dedupe window over the target's calls"),
        ("finalise_collapse_in_batch", "ingest, once per batch", (ctx["fresh"],), "in-file duplicates"),
        ("numbers_seen_by_target", "a several-number lead going on",
         (["+14152000001", "+19000000001"], "sales", None, now - timedelta(days=1), 1),
         "its numbers other leads hold"),
        ("target_counts", "metrics scrape, GET /v1/targets", (), "live counts"),
        ("metrics_callback_wait", "metrics scrape",
         (now, ["queued", "assigned", "connected", "submitting", "uncertain"]), "oldest waiting call"),
    ]


async def _explain(dsn: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from dialer.store.database import create_pool
    from dialer.store.queries import Q

    now = datetime.now(UTC)
    out = []
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as c:
            for name, where, params, why in _queries(ctx, now):
                tr = c.transaction()
                await tr.start()
                try:
                    rows = await c.fetch("EXPLAIN (ANALYZE, BUFFERS) " + getattr(Q, name), *params)
                finally:
                    await tr.rollback()
                plan = "\n".join(r[0] for r in rows)
                ms = float(m.group(1)) if (m := re.search(r"Execution Time: ([\d.]+) ms", plan)) else float("nan")
                out.append({"query": name, "where": where, "why": why, "ms": ms, "plan": plan,
                            "seq_scan_calls": bool(re.search(r"Seq Scan on calls\b", plan))})
    finally:
        await pool.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--history", type=int, default=10_000_000, help="ended calls (default %(default)s)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    before = common.machine_before()
    with common.throwaway_server("dialer-bench-plans-", keep=args.keep) as server:
        common.psql(server.dsn, "CREATE DATABASE bench_plans")
        dsn = server.database("bench_plans")
        t0 = time.perf_counter()
        ctx = asyncio.run(_seed(dsn, args.history))
        common.psql(dsn, "VACUUM (ANALYZE) calls")
        common.psql(dsn, "VACUUM (ANALYZE) batches")
        common.log(f"seeded {args.history:,} ended calls + today's in {time.perf_counter() - t0:.0f} s")
        size = common.psql(dsn, "SELECT pg_size_pretty(pg_total_relation_size('calls'))")
        results = asyncio.run(_explain(dsn, ctx))
    print(f"\nhot query plans: {args.history:,} ended calls of history + {LIVE:,} pending, 50 in flight, "
          f"a {LIVE:,}-row batch being finalised; calls is {size} with its indexes")
    print(f"machine before the run: {before['busy']:.0%} busy, load average {before['load1']:.2f}")
    for r in results:
        print(f"\n### {r['query']} ({r['where']}: {r['why']}) — {r['ms']:.2f} ms\n")
        print(r["plan"])
    print()
    for r in results:
        print(common.check_line(f"{r['query']}: no sequential scan of calls", not r["seq_scan_calls"],
                                f"{r['ms']:.2f} ms"))
    if args.json:
        print(json.dumps({"history": args.history, "size": size,
                          "queries": {r["query"]: {"ms": r["ms"], "seq_scan_calls": r["seq_scan_calls"]}
                                      for r in results}}))
    return 0 if not any(r["seq_scan_calls"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
