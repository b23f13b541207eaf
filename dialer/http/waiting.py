"""``GET /v1/targets/{name}/waiting``: why isn't it dialing? A target's waiting calls by what
holds them (``dispatch/waiting.py``) — the console's Targets page and the
``dialer_calls_waiting`` gauge show the same."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from dialer.dispatch import waiting
from dialer.errors import NotFound
from dialer.http.context import AppContext, Ctx
from dialer.store.queries import Q

router = APIRouter()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReasonOut(_Strict):
    reason: str = Field(description="What holds these calls: " + "; ".join(
        f"{k}: {v}" for k, v in waiting.ABOUT.items()))
    count: int
    clears_at: datetime | None = Field(description="When the first of them is released (for "
                                       "expired_soon: when the first expires); null when it cannot "
                                       "be told (paused, pacing with no wrap-up ending) or count is 0")
    about: str


class WaitingOut(_Strict):
    target: str
    computed_at: datetime
    total: int = Field(description="Waiting (live, not yet sent) calls of the target; each is "
                       "counted under one reason, expired_soon counts some of them again")
    expired_soon_within_s: int = Field(description="The horizon of expired_soon")
    in_flight: int
    pacing_limit: int = Field(description="Ready agents × calls_per_agent")
    ready_agents: int
    reasons: list[ReasonOut] = Field(description="Every reason, in a fixed order, zeros included")


@router.get("/targets/{name}/waiting", response_model=WaitingOut,
            summary="Why isn't it dialing? A target's waiting calls by what holds them")
async def target_waiting(name: Annotated[str, PathParam(max_length=100)], ctx: Ctx) -> Any:
    out = await waiting_out(ctx, name)
    if out is None:
        raise NotFound(f"no target {name!r}")
    return out


async def waiting_out(ctx: AppContext, name: str) -> WaitingOut | None:
    """A configured target's waiting calls by reason; None when there is no such target."""
    t = ctx.settings.targets.get(name)
    if t is None:
        return None
    async with ctx.pool.acquire() as conn:
        st = await conn.fetchrow(Q.target_state_get, name)
        w = await waiting.for_target(conn, name, t, ctx.dispatcher, bool(st and st["paused"]),
                                     ctx.clock.now())
    return to_out(w)


def to_out(w: waiting.Waiting) -> WaitingOut:
    p = w.pace
    return WaitingOut(
        target=w.target, computed_at=w.computed_at, total=w.total,
        expired_soon_within_s=int(waiting.EXPIRY_HORIZON.total_seconds()),
        in_flight=p.in_flight if p else 0, pacing_limit=p.limit if p else 0,
        ready_agents=p.ready_agents if p else 0,
        reasons=[ReasonOut(reason=r.reason, count=r.count, clears_at=r.clears_at,
                           about=waiting.ABOUT[r.reason]) for r in w.reasons])
