"""Shared agent state: what reading it at every pacing fill, and writing an agent event,
cost — beside the floor measured in the same run on the same connection (a bare
``SELECT 1`` round trip; one single-row upsert in its own transaction).

    .venv/bin/python bench/agents.py [--agents 500] [--n 5000] [--json]

A fill for a ringme or PortSIP target makes one more query than a static target's
(``agent_view_read``); an agent event is one transaction (lock the row, upsert, mark the
source heard). Both run on one connection, one at a time: latency, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import log, migrate, throwaway_server


async def measure(dsn: str, agents: int, n: int) -> dict[str, Any]:
    from dialer.clock import FakeClock
    from dialer.config import load_settings
    from dialer.dispatch.pacing import StaticAgents
    from dialer.providers.agents import AgentSelector
    from dialer.providers.ringme import RingmeReadiness
    from dialer.store.database import create_pool

    names = [f"agent{i}" for i in range(agents)]
    s = load_settings(None, environ={}, overrides={
        "targets": {"sales": {"queue_id": "1", "agents": names[:50], "agents_source": "ringme"},
                    "static": {"queue_id": "2", "agents": names[:50]}},
        "default_target": "sales"})
    clock = FakeClock()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    out: dict[str, Any] = {"agents": agents, "n": n}
    try:
        ringme = RingmeReadiness(s, clock, pool)
        for i, name in enumerate(names):  # every agent known, a third of them available
            await ringme.apply({"agent_id": name, "agent_status": "available" if i % 3 == 0 else "logged_out"})
        selector = AgentSelector(s, clock, {"ringme": ringme})
        static = StaticAgents(s.targets)
        async with pool.acquire() as conn:
            async def timed(what: str, fn: Any) -> float:
                for _ in range(min(200, n)):  # warm: prepared statements, caches
                    await fn()
                t0 = time.perf_counter()
                for _ in range(n):
                    await fn()
                us = (time.perf_counter() - t0) / n * 1e6
                out[what] = round(us, 1)
                return us

            await timed("select1_us", lambda: conn.fetchval("SELECT 1"))
            await timed("static_ready_us", lambda: static.ready(conn, "static"))
            await timed("ringme_ready_us", lambda: selector.ready(conn, "sales"))
            await conn.execute("CREATE TEMP TABLE floor (k text PRIMARY KEY, v text, at timestamptz)")

            async def upsert() -> None:
                async with conn.transaction():
                    await conn.execute("INSERT INTO floor VALUES ('a', 'x', now()) ON CONFLICT (k) DO UPDATE "
                                       "SET v = EXCLUDED.v, at = EXCLUDED.at")

            await timed("upsert_floor_us", upsert)
        flip = [0]

        async def event() -> None:
            flip[0] += 1
            clock.advance(0.001)
            await ringme.apply({"agent_id": names[flip[0] % agents],
                                "agent_status": "available" if flip[0] % 2 else "logged_out"})

        await timed_events(out, n, event)
    finally:
        await pool.close()
    return out


async def timed_events(out: dict[str, Any], n: int, fn: Any) -> None:
    for _ in range(min(200, n)):
        await fn()
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    out["event_us"] = round((time.perf_counter() - t0) / n * 1e6, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the seeding's "agent in no target" warnings
    with throwaway_server("bench-agents-") as server:
        dsn = server.database("postgres")
        asyncio.run(migrate(dsn))
        r = asyncio.run(measure(dsn, args.agents, args.n))
    log(f"{r['agents']} agents known, {r['n']} calls each, one connection")
    log(f"read at a fill: ringme target {r['ringme_ready_us']} µs | static target {r['static_ready_us']} µs "
        f"| floor: SELECT 1 round trip {r['select1_us']} µs")
    log(f"agent event:    {r['event_us']} µs ({1e6 / r['event_us']:.0f}/s) "
        f"| floor: one-row upsert in a transaction {r['upsert_floor_us']} µs")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
