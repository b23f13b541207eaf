"""``/v1/calls/{id}/schedule`` and ``/v1/callbacks``: agent-scheduled callbacks for CRMs
(the rules are ``lifecycle/callbacks_scheduled.py``'s)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from dialer.errors import Conflict, DialerError, InvalidInput, NotFound
from dialer.http.bodies import loads, require_type, validated
from dialer.http.context import Ctx
from dialer.http.limits import read_body
from dialer.http.models import CallbackList, CallbackOut, ErrorOut, ScheduleIn
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
    require_type(request)
    body = validated(ScheduleIn, loads(await read_body(request, 64 * 1024)))
    now = ctx.clock.now()
    try:
        done = await callbacks_scheduled.request(ctx.pool, ctx.settings, call_id, body.at, body.agent,
                                                 "api", now)
    except Refused as e:
        raise http_error(e) from None
    async with ctx.pool.acquire() as conn:
        rows = await callbacks_listing.listing(conn, callbacks_listing.Filter(lead=done.lead_id), now)
    return _out(next(r for r in rows if r["call_id"] == done.call_id))


def _out(row: dict[str, Any]) -> CallbackOut:
    return CallbackOut(**{k: v for k, v in row.items() if k in CallbackOut.model_fields})


def _time(name: str, v: str | None) -> datetime | None:
    """A filter's RFC 3339 time: an offset is required (whose midnight would it be?)."""
    if v is None:
        return None
    try:
        t = datetime.fromisoformat(v[:-1] + "+00:00" if v[-1:] in ("Z", "z") else v)
    except ValueError:
        raise InvalidInput(f"{name}: {v!r} is not an RFC 3339 time like 2026-12-01T15:00:00Z") from None
    if t.tzinfo is None:
        raise InvalidInput(f"{name}: {v!r} has no offset (add Z or e.g. -06:00)")
    return t


@router.get("/callbacks", response_model=CallbackList, summary="Scheduled callbacks, soonest first")
async def list_callbacks(
    ctx: Ctx,
    target: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]+$")] = None,
    agent: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]+$",
                                       description="The owner")] = None,
    start: Annotated[str | None, Query(alias="from", max_length=64, json_schema_extra={"format": "date-time"},
                                       description="Due at or after (RFC 3339, with its offset)")] = None,
    end: Annotated[str | None, Query(alias="to", max_length=64, json_schema_extra={"format": "date-time"},
                                     description="Due before (RFC 3339, with its offset)")] = None,
    open_only: Annotated[bool, Query(alias="open", description="Only those not yet dialed")] = False,
    limit: Annotated[int, Query(ge=1, le=callbacks_listing.MAX_ROWS)] = 500,
) -> Any:
    if target is not None and target not in ctx.settings.targets:
        raise InvalidInput(f"target: unknown target {target!r}", {"targets": sorted(ctx.settings.targets)})
    f = callbacks_listing.Filter(target, agent, _time("from", start), _time("to", end), not open_only, limit)
    async with ctx.pool.acquire() as conn:
        rows = await callbacks_listing.listing(conn, f, ctx.clock.now())
    return CallbackList(callbacks=[_out(r) for r in rows])
