"""``/v1/targets``: each target's pacing, breaker, pause and waiting calls; pause and resume.

``target_views`` and ``apply_pause`` serve the console too, so both show and do the same.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from dialer.dispatch import abandon
from dialer.dispatch.pacing import StaticAgents, measure
from dialer.dispatch.targets import set_paused
from dialer.errors import NotFound
from dialer.http.context import AppContext, Ctx
from dialer.http.models import TargetList, TargetOut
from dialer.store.queries import Q

router = APIRouter()


@router.get("/targets", response_model=TargetList, summary="Targets and their pacing state")
async def targets(ctx: Ctx) -> Any:
    return TargetList(targets=await target_views(ctx))


@router.post("/targets/{name}/pause", response_model=TargetOut, summary="Stop sending calls for a target")
async def pause(name: Annotated[str, PathParam(max_length=100)], ctx: Ctx) -> Any:
    return await _paused_view(ctx, name, True)


@router.post("/targets/{name}/resume", response_model=TargetOut, summary="Resume sending calls")
async def resume(name: Annotated[str, PathParam(max_length=100)], ctx: Ctx) -> Any:
    return await _paused_view(ctx, name, False)


async def _paused_view(ctx: AppContext, name: str, paused: bool) -> TargetOut:
    if not await apply_pause(ctx, name, paused, "api"):
        raise NotFound(f"no target {name!r}")
    return next(t for t in await target_views(ctx) if t.name == name)


async def apply_pause(ctx: AppContext, name: str, paused: bool, by: str) -> bool:
    """Pause or resume a configured target (False if there is none of that name); a resumed
    target is dispatched again at once."""
    if name not in ctx.settings.targets:
        return False
    await set_paused(ctx.pool, name, paused, by, ctx.clock.now())
    if not paused:
        ctx.wake_dispatch()
    return True


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
            pace = await abandon.as_dispatched(conn, name, t, await measure(conn, name, t, agents,
                                                                           ctx.clock.now()))
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
