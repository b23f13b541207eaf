"""``/v1/calls/{id}/schedule`` and ``/v1/callbacks``: agent-scheduled callbacks for CRMs
(the rules are ``lifecycle/callbacks_scheduled.py``'s)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from dialer.errors import Conflict, DialerError, InvalidInput, NotFound
from dialer.http.bodies import loads, validated
from dialer.http.context import Ctx
from dialer.http.limits import read_body
from dialer.http.models import ISO_TIME, CallbackList, CallbackOut, ErrorOut, ScheduleIn
from dialer.lifecycle import callbacks_listing, callbacks_scheduled
from dialer.lifecycle.callbacks_scheduled import Refused

router = APIRouter()


def http_error(e: Refused) -> DialerError:
    """A refusal as the API answers it: 404 no call, 409 the lead's state forbids it, 422
    the request itself (a bad or past time, an unknown agent); the code says which."""
    cls = NotFound if e.code == "not_found" else Conflict if e.code in callbacks_scheduled.CONFLICTS \
        else InvalidInput
    err = cls(e.message, e.details)
    err.code = e.code
    return err


@router.post(
    "/calls/{call_id}/schedule", status_code=201, response_model=CallbackOut,
    summary="Schedule a callback for the call's lead (owned by an agent)",
    responses={409: {"model": ErrorOut, "description": "The lead may not be called back now: it is on the "
                     "do-not-call list, its batch was cancelled, it has a live attempt, or it was never "
                     "dialable"},
               413: {"model": ErrorOut, "description": "Body over the limit"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ScheduleIn"}}}}},
)
async def schedule(call_id: Annotated[int, PathParam(ge=1, le=2**62)], request: Request, ctx: Ctx) -> Any:
    body = validated(ScheduleIn, loads(await read_body(request, 64 * 1024)))
    now = ctx.clock.now()
    try:
        done = await callbacks_scheduled.request(ctx.pool, ctx.settings, call_id, body.at, body.agent,
                                                 "api", now)
    except Refused as e:
        raise http_error(e) from None
    async with ctx.pool.acquire() as conn:
        rows = await callbacks_listing.listing(conn, callbacks_listing.Filter(start=done.due_at), now)
    return _out(next(r for r in rows if r["call_id"] == done.call_id))


def _out(row: dict[str, Any]) -> CallbackOut:
    return CallbackOut(**{k: v for k, v in row.items() if k in CallbackOut.model_fields})


def _time(name: str, v: str | None) -> datetime | None:
    if v is None:
        return None
    try:
        return callbacks_scheduled.parse_time(v, callbacks_scheduled.lead_zone(None, "UTC"))
    except ValueError as e:
        raise InvalidInput(f"{name}: {e}") from None


@router.get("/callbacks", response_model=CallbackList, summary="Scheduled callbacks, soonest first")
async def list_callbacks(
    ctx: Ctx,
    target: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]+$")] = None,
    agent: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]+$",
                                       description="The owner")] = None,
    start: Annotated[str | None, Query(alias="from", pattern=ISO_TIME, max_length=40,
                                       description="Due at or after (ISO 8601; no offset: UTC)")] = None,
    end: Annotated[str | None, Query(alias="to", pattern=ISO_TIME, max_length=40,
                                     description="Due before (ISO 8601; no offset: UTC)")] = None,
    open_only: Annotated[bool, Query(alias="open", description="Only those not yet dialed")] = False,
    limit: Annotated[int, Query(ge=1, le=callbacks_listing.MAX_ROWS)] = 500,
) -> Any:
    f = callbacks_listing.Filter(target, agent, _time("from", start), _time("to", end), not open_only, limit)
    async with ctx.pool.acquire() as conn:
        rows = await callbacks_listing.listing(conn, f, ctx.clock.now())
    return CallbackList(callbacks=[_out(r) for r in rows])
