"""``/v1/targets/{name}/figures`` and ``/v1/batches/{id}/figures``: campaign figures
(``results/figures.py``) — the console shows the same through ``figures_out``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from dialer.errors import NotFound
from dialer.http.context import AppContext, Ctx
from dialer.results import figures
from dialer.store.queries import Q

router = APIRouter()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HourOut(_Strict):
    hour: int = Field(description="Hour of the lead's local day, 0-23")
    attempts: int
    answered: int
    answer_rate: float | None = Field(description="answered / attempts; null with no attempt")


class ExhaustionOut(_Strict):
    remaining: int = Field(description="Calls waiting to be sent (pending, scheduled, retry_wait)")
    sent_recently: int = Field(description="Attempts claimed in the last window_s seconds")
    window_s: int
    send_rate_per_min: float
    seconds: float | None = Field(description="Until nothing is left at the current pace; null "
                                  "when it cannot be told (see reason)")
    at: datetime | None
    reason: str | None = Field(description="Why seconds is null (or 0)")


class FiguresOut(_Strict):
    scope: Literal["target", "batch"]
    target: str
    batch_id: str | None
    window_h: int | None = Field(description="A target's figures: its open batches and those "
                                 "created in the last window_h hours")
    computed_at: datetime
    batches: int
    leads: int = Field(description="Leads that are calls (rows rejected at intake are not)")
    attempts: int = Field(description="Calls claimed for sending, re-dials included")
    leads_attempted: int
    answered: int
    penetration: float | None = Field(description="leads_attempted / leads")
    contact_rate: float | None = Field(description="answered / attempts")
    attempts_per_lead: float | None = Field(description="attempts / leads_attempted")
    talk_mean_s: float | None = Field(description="Mean talk time of answered calls that "
                                      "reported one")
    talk_reported: int = Field(description="Answered calls whose callback reported a talk time")
    answer_rate_by_hour: list[HourOut] = Field(description="24 hours of the lead's local day")
    exhaustion: ExhaustionOut


@router.get("/targets/{name}/figures", response_model=FiguresOut,
            summary="A target's campaign figures: its open batches and those of the last window_h hours")
async def target_figures(
    name: Annotated[str, PathParam(max_length=100)],
    ctx: Ctx,
    window_h: Annotated[int, Query(ge=1, le=figures.MAX_WINDOW_H)] = figures.DEFAULT_WINDOW_H,
) -> Any:
    out = await target_figures_out(ctx, name, window_h)
    if out is None:
        raise NotFound(f"no target {name!r}")
    return out


@router.get("/batches/{batch_id}/figures", response_model=FiguresOut,
            summary="A batch's campaign figures")
async def batch_figures(batch_id: uuid.UUID, ctx: Ctx) -> Any:
    out = await batch_figures_out(ctx, batch_id)
    if out is None:
        raise NotFound(f"no batch {batch_id}")
    return out


async def target_figures_out(ctx: AppContext, name: str,
                             window_h: int = figures.DEFAULT_WINDOW_H) -> FiguresOut | None:
    """A configured target's figures; None when there is no such target."""
    if name not in ctx.settings.targets:
        return None
    async with ctx.pool.acquire() as conn:
        f = await figures.for_target(conn, name, ctx.clock.now(), window_h)
    return figures_out(f, "target", name, None, window_h)


async def batch_figures_out(ctx: AppContext, batch_id: uuid.UUID) -> FiguresOut | None:
    """A batch's figures; None when there is no such batch."""
    async with ctx.pool.acquire() as conn:
        b = await conn.fetchrow(Q.batch_get, batch_id)
        if b is None:
            return None
        f = await figures.for_batch(conn, batch_id, ctx.clock.now())
    return figures_out(f, "batch", b["target"], str(batch_id), None)


def figures_out(f: figures.Figures, scope: Literal["target", "batch"], target: str,
                batch_id: str | None, window_h: int | None) -> FiguresOut:
    e = f.exhaustion
    return FiguresOut(
        scope=scope, target=target, batch_id=batch_id, window_h=window_h, computed_at=f.computed_at,
        batches=f.batches, leads=f.leads, attempts=f.attempts, leads_attempted=f.leads_attempted,
        answered=f.answered, penetration=f.penetration, contact_rate=f.contact_rate,
        attempts_per_lead=f.attempts_per_lead, talk_mean_s=f.talk_mean_s, talk_reported=f.talk_reported,
        answer_rate_by_hour=[HourOut(hour=h.hour, attempts=h.attempts, answered=h.answered,
                                     answer_rate=h.answer_rate) for h in f.hours],
        exhaustion=ExhaustionOut(remaining=e.remaining, sent_recently=e.sent_recently, window_s=e.window_s,
                                 send_rate_per_min=e.send_rate_per_min, seconds=e.seconds, at=e.at,
                                 reason=e.reason),
    )
