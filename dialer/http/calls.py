"""``/v1/calls``: one call with its events, or the calls carrying a CRM's external_id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from dialer.errors import NotFound
from dialer.http.context import Ctx
from dialer.http.models import CallList, CallOut, CallSummary
from dialer.lifecycle import number_report
from dialer.store.queries import Q

router = APIRouter()


@router.get("/calls/{call_id}", response_model=CallOut, summary="A call with its events")
async def get_call(call_id: Annotated[int, PathParam(ge=1, le=2**62)], ctx: Ctx) -> Any:
    async with ctx.pool.acquire() as conn:
        out = await _call(conn, call_id)
    if out is None:
        raise NotFound(f"no call {call_id}")
    return out


@router.get("/calls", response_model=CallList, summary="Calls by your external_id")
async def find_calls(
    ctx: Ctx, external_id: Annotated[str, Query(min_length=1, max_length=4000, pattern=r"^[^\x00]+$")]
) -> Any:
    async with ctx.pool.acquire() as conn:
        ids = [x["id"] for x in await conn.fetch(Q.calls_by_external_id, external_id)]
        calls = [c for c in [await _call(conn, i) for i in ids] if c is not None]
    return CallList(calls=calls)


def call_summary(x: Any, per_number: dict[str, int] | None = None) -> CallSummary:
    """A call row as the API lists it (also in a batch's pages of calls)."""
    several: dict[str, Any] = {}
    if x["numbers"] is not None:
        per = per_number if per_number is not None else (x["per_number"] or {})
        several = number_report.reached(x, per)
    return CallSummary(
        id=x["id"], number=x["e164"], external_id=x["external_id"], state=x["state"],
        outcome=x["outcome"], attempt=x["attempt"], agent=x["agent"], priority=x["priority"],
        created_at=x["created_at"], updated_at=x["updated_at"], ended_at=x["ended_at"],
        number_reached=x["e164"] if x["state"] == "answered" else None,
        numbers=several.get("numbers"), attempts_per_number=several.get("attempts_per_number"),
    )


async def _call(conn: Any, call_id: int) -> CallOut | None:
    c = await conn.fetchrow(Q.call_get, call_id)
    if c is None:
        return None
    events = [dict(e) for e in await conn.fetch(Q.call_events, call_id)]
    per = await number_report.attempts(conn, c["lead_id"] or c["id"]) if c["numbers"] is not None else None
    base = call_summary(c, per).model_dump()
    return CallOut(
        **base, batch_id=str(c["batch_id"]), target=c["target"], line=c["line"],
        fields=c["fields"], agents=c["agents"], timezone=c["timezone"], expires_at=c["expires_at"],
        events=events,
    )
