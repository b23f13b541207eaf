"""What the API and the console show of each target: pacing, breaker, pause, waiting calls."""

from __future__ import annotations

from dialer.dispatch.pacing import StaticAgents, measure
from dialer.http.context import AppContext
from dialer.http.models import TargetOut
from dialer.store.queries import Q


async def target_views(ctx: AppContext) -> list[TargetOut]:
    d = ctx.dispatcher
    out = []
    async with ctx.pool.acquire() as conn:
        states = {x["target"]: x for x in await conn.fetch(Q.target_state_all)}
        waiting: dict[str, dict[str, int]] = {}
        for x in await conn.fetch(Q.target_counts):
            waiting.setdefault(x["target"], {})[x["state"]] = x["n"]
        for name, t in ctx.settings.targets.items():
            agents = d.agents if d is not None else StaticAgents(ctx.settings.targets)
            source = d.agent_source_name(name) if d is not None else "static"
            pace = await measure(conn, name, t, agents, ctx.clock.now(), source)
            st = states.get(name)
            br = d.breakers.get(name) if d is not None else None
            breaker = br.snapshot() if br is not None else {"state": "closed"}
            out.append(TargetOut(
                name=name, kind=t.kind, paused=bool(st and st["paused"]),
                paused_reason=st["paused_reason"] if st else None, breaker=breaker,
                ready_agents=pace.ready_agents, wrapup_agents=pace.wrapup_agents,
                agents_source=pace.source, calls_per_agent=t.calls_per_agent, limit=pace.limit,
                in_flight=pace.in_flight, waiting=waiting.get(name, {}), calling_hours=t.calling_hours,
            ))
    return out
