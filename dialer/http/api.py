"""The CRM-facing API under ``/v1`` (bearer auth on every route)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import ValidationError

from dialer.errors import InvalidInput, NotFound, NotReady, TooLarge
from dialer.http.context import AppContext, get_ctx
from dialer.http.errors import validation_details
from dialer.http.models import (
    BatchAccepted,
    BatchIn,
    BatchOut,
    CallList,
    CallOut,
    CallsPage,
    CallSummary,
    CancelOut,
    DncIn,
    DncOut,
    ErrorOut,
    TargetList,
    TargetOut,
)
from dialer.intake import dnc as dnc_import
from dialer.intake import phones
from dialer.intake.submit import Submission, submit
from dialer.lifecycle import moves, observe
from dialer.store.queries import Q

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or invalid bearer token"},
    404: {"model": ErrorOut, "description": "Not found"},
    422: {"model": ErrorOut, "description": "Malformed request"},
}


Ctx = Annotated[AppContext, Depends(get_ctx)]
# a DNC file must hold at least one phone-number-like run of digits
_PHONEISH_RE = "[0-9][0-9 ().+-]{5,}[0-9]"
_PHONEISH = re.compile(_PHONEISH_RE.encode())


async def known_query_only(request: Request) -> None:
    """A misspelt query parameter is an error, not silently ignored."""
    from fastapi.routing import APIRoute

    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    allowed: set[str] = set()
    todo = [route.dependant]
    while todo:
        dep = todo.pop()
        allowed.update(p.alias for p in dep.query_params)
        todo.extend(dep.dependencies)
    unknown = sorted(k for k in request.query_params if k not in allowed)
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r}", {"allowed": sorted(allowed)})


def router(auth: Any) -> APIRouter:
    r = APIRouter(prefix="/v1", dependencies=[Depends(auth), Depends(known_query_only)], responses=_ERRORS)

    @r.post(
        "/batches",
        status_code=202,
        response_model=BatchAccepted,
        summary="Submit a batch of leads (JSON or text/csv)",
        responses={
            409: {"model": ErrorOut, "description": "Idempotency-Key reused with another body"},
            413: {"model": ErrorOut, "description": "Body or lead count over the limit"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/BatchIn"}},
                    "text/csv": {"schema": {
                        "type": "string",
                        "description": "A CSV whose header names a number column",
                        # a header line naming the number column ("," ";" or tab separated)
                        "pattern": "^\\ufeff?(?i:number|phone|mobile)\\r?\\n",
                    }},
                },
            }
        },
    )
    async def post_batch(
        request: Request,
        ctx: Ctx,
        target: Annotated[str | None, Query(max_length=100)] = None,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=200)
        ] = None,
    ) -> Any:
        s = ctx.settings
        if ctx.draining:
            raise NotReady("the daemon is shutting down: send this batch again in a moment")
        if target is not None and target not in s.targets:
            raise InvalidInput(f"target: unknown target {target!r}", {"targets": sorted(s.targets)})
        body = await read_body(request, s.max_body_bytes)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        digest = hashlib.sha256(
            ctype.encode() + b"\0" + (target or "").encode() + b"\0" + body
        ).hexdigest()
        if ctype in ("text/csv", "application/csv", "text/plain"):
            sub = Submission(target=target or s.default_target, csv=body)
        elif ctype in ("application/json", ""):
            sub = _json_submission(body, target, s.default_target, s.max_batch_leads)
        else:
            raise InvalidInput(
                f"content-type {ctype!r} is not supported: send application/json or text/csv"
            )
        sub.idempotency_key = idempotency_key
        sub.request_sha256 = digest
        status, out = await submit(ctx.pool, s, ctx.clock, sub)
        return Response(orjson.dumps(out), status_code=status, media_type="application/json")

    @r.get("/batches/{batch_id}", response_model=BatchOut, summary="A batch's state and counts")
    async def get_batch(batch_id: uuid.UUID, ctx: Ctx) -> Any:
        async with ctx.pool.acquire() as conn:
            b = await conn.fetchrow(Q.batch_get, batch_id)
            if b is None:
                raise NotFound(f"no batch {batch_id}")
            by_state = {x["state"]: x["n"] for x in await conn.fetch(Q.batch_call_counts, batch_id)}
            by_outcome = {
                x["outcome"]: x["n"] for x in await conn.fetch(Q.batch_outcome_counts, batch_id)
            }
        return BatchOut(
            batch_id=str(b["id"]), target=b["target"], source=b["source"],
            source_name=b["source_name"], state=b["state"], created_at=b["created_at"],
            ingested_at=b["ingested_at"], counts=dict(b["counts"]),
            calls_by_state=by_state, calls_by_outcome=by_outcome, error=b["error"],
        )

    @r.get("/batches/{batch_id}/calls", response_model=CallsPage, summary="The batch's calls, paged")
    async def batch_calls(
        batch_id: uuid.UUID,
        ctx: Ctx,
        cursor: Annotated[str | None, Query(max_length=40, pattern=r"^[0-9]*$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        after = int(cursor) if cursor else 0
        if after > 2**62:
            raise InvalidInput("cursor: out of range")
        async with ctx.pool.acquire() as conn:
            if await conn.fetchrow(Q.batch_get, batch_id) is None:
                raise NotFound(f"no batch {batch_id}")
            rows = await conn.fetch(Q.batch_calls_page, batch_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return CallsPage(
            calls=[_summary(x) for x in rows],
            next_cursor=str(rows[-1]["id"]) if more and rows else None,
        )

    @r.get("/calls/{call_id}", response_model=CallOut, summary="A call with its events")
    async def get_call(call_id: Annotated[int, PathParam(ge=1, le=2**62)], ctx: Ctx) -> Any:
        async with ctx.pool.acquire() as conn:
            out = await _call(conn, call_id)
        if out is None:
            raise NotFound(f"no call {call_id}")
        return out

    @r.get("/calls", response_model=CallList, summary="Calls by your external_id")
    async def find_calls(
        ctx: Ctx, external_id: Annotated[str, Query(min_length=1, max_length=4000, pattern=r"^[^\x00]+$")]
    ) -> Any:
        async with ctx.pool.acquire() as conn:
            ids = [x["id"] for x in await conn.fetch(Q.calls_by_external_id, external_id)]
            calls = [c for c in [await _call(conn, i) for i in ids] if c is not None]
        return CallList(calls=calls)

    @r.post(
        "/dnc", response_model=DncOut,
        summary="Add numbers to the do-not-call list (JSON, or a text/plain file: one per line)",
        responses={413: {"model": ErrorOut, "description": "Body over the limit"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DncIn"}},
                    "text/plain": {"schema": {"type": "string", "pattern": _PHONEISH_RE}},
                    "text/csv": {"schema": {"type": "string", "pattern": _PHONEISH_RE}},
                },
            }
        },
    )
    async def add_dnc(
        request: Request,
        ctx: Ctx,
        region: Annotated[str | None, Query(max_length=8)] = None,
    ) -> Any:
        s = ctx.settings
        if region is not None and not phones.is_supported_region(region, exact=True):
            raise InvalidInput(f"region: unknown region {region!r} (ISO 3166 code, upper case)")
        body = await read_body(request, s.max_body_bytes)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("text/plain", "text/csv"):
            if _PHONEISH.search(body) is None:
                raise InvalidInput("body: no phone number in it: send one number per line")
            reg = (region or s.targets[s.default_target].default_region).upper()
            if not phones.is_supported_region(reg):
                raise InvalidInput(f"region: unknown region {reg!r}")
            rep = await dnc_import.import_bytes(ctx.pool, body, region=reg, source="api",
                                                now=ctx.clock.now())
            return DncOut(
                added=rep.added, updated=rep.updated,
                invalid=[{"index": x["line"], "number": x["value"], "reason": x["reason"] or "invalid"}
                         for x in rep.invalid_samples],
            )
        try:
            payload = DncIn.model_validate(loads(body))
        except ValidationError as e:
            details = validation_details(list(e.errors()))
            raise InvalidInput(f"{details[0]['field']}: {details[0]['message']}", details) from None
        if payload.region is not None and not phones.is_supported_region(payload.region, exact=True):
            raise InvalidInput(f"region: unknown region {payload.region!r} (ISO 3166 code, upper case)")
        region = (payload.region or region or s.targets[s.default_target].default_region).upper()
        if not phones.is_supported_region(region):
            raise InvalidInput(f"region: unknown region {region!r}")
        good: list[str] = []
        invalid = []
        for i, raw in enumerate(payload.numbers):
            e164, why = phones.normalise(raw, region)
            if e164 is None:
                invalid.append({"index": i, "number": raw[:64], "reason": why or "invalid"})
            else:
                good.append(e164)
        good = sorted(set(good))
        now = ctx.clock.now()
        async with ctx.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(Q.dnc_add, good, "api", now, payload.expires_at)
            # calls not yet sent to these numbers end now, in every target
            cancelled = await moves.cancel_for_dnc(conn, good, now, {"rule": "dnc", "by": "api"})
        observe.ended(cancelled)
        added = sum(1 for x in rows if x["inserted"])
        return DncOut(added=added, updated=len(rows) - added, invalid=invalid)

    @r.delete("/dnc/{number}", status_code=204, summary="Remove a number from the do-not-call list")
    async def delete_dnc(number: Annotated[str, PathParam(max_length=64)], ctx: Ctx) -> Response:
        s = ctx.settings
        e164, _ = phones.normalise(number, s.targets[s.default_target].default_region)
        if e164 is None:  # not a phone number, so certainly not on the list
            raise NotFound("that number is not on the do-not-call list")
        async with ctx.pool.acquire() as conn:
            gone = await conn.fetchval(Q.dnc_delete, e164)
        if gone is None:
            raise NotFound(f"{phones.mask(e164)} is not on the do-not-call list")
        return Response(status_code=204)

    @r.post("/batches/{batch_id}/cancel", response_model=CancelOut,
             summary="Cancel a batch: its calls not yet sent end as cancelled")
    async def cancel_batch(batch_id: uuid.UUID, ctx: Ctx) -> Any:
        now = ctx.clock.now()
        async with ctx.pool.acquire() as conn, conn.transaction():
            if await conn.fetchrow(Q.batch_get, batch_id) is None:
                raise NotFound(f"no batch {batch_id}")
            ended = await moves.cancel_batch(conn, batch_id, now, "api")
        observe.ended(ended)
        return CancelOut(batch_id=str(batch_id), cancelled=len(ended))

    @r.get("/targets", response_model=TargetList, summary="Targets and their pacing state")
    async def targets(ctx: Ctx) -> Any:
        return TargetList(targets=await _targets(ctx))

    @r.post("/targets/{name}/pause", response_model=TargetOut, summary="Stop sending calls for a target")
    async def pause(name: Annotated[str, PathParam(max_length=100)], ctx: Ctx) -> Any:
        return await _set_paused(ctx, name, True)

    @r.post("/targets/{name}/resume", response_model=TargetOut, summary="Resume sending calls")
    async def resume(name: Annotated[str, PathParam(max_length=100)], ctx: Ctx) -> Any:
        return await _set_paused(ctx, name, False)

    return r


async def _set_paused(ctx: AppContext, name: str, paused: bool) -> TargetOut:
    if name not in ctx.settings.targets:
        raise NotFound(f"no target {name!r}")
    async with ctx.pool.acquire() as conn:
        await conn.execute(Q.target_pause, name, paused, "api" if paused else None, ctx.clock.now())
    if not paused:
        ctx.wake_dispatch()
    return next(t for t in await _targets(ctx) if t.name == name)


async def _targets(ctx: AppContext) -> list[TargetOut]:
    from dialer.dispatch.pacing import StaticAgents, measure

    d = ctx.dispatcher
    out = []
    async with ctx.pool.acquire() as conn:
        states = {x["target"]: x for x in await conn.fetch(Q.target_state_all)}
        waiting: dict[str, dict[str, int]] = {}
        for x in await conn.fetch(Q.target_counts):
            waiting.setdefault(x["target"], {})[x["state"]] = x["n"]
        for name, t in ctx.settings.targets.items():
            agents = d.agents if d is not None else StaticAgents(ctx.settings.targets)
            pace = await measure(conn, name, t, agents, ctx.clock.now())
            st = states.get(name)
            breaker = d.breakers[name].snapshot() if d is not None else {"state": "closed"}
            out.append(TargetOut(
                name=name, kind=t.kind, paused=bool(st and st["paused"]),
                paused_reason=st["paused_reason"] if st else None, breaker=breaker,
                ready_agents=pace.ready_agents, wrapup_agents=pace.wrapup_agents,
                agents_source=pace.source, calls_per_agent=t.calls_per_agent, limit=pace.limit,
                in_flight=pace.in_flight, waiting=waiting.get(name, {}), calling_hours=t.calling_hours,
            ))
    return out


def _summary(x: Any) -> CallSummary:
    return CallSummary(
        id=x["id"], number=x["e164"], external_id=x["external_id"], state=x["state"],
        outcome=x["outcome"], attempt=x["attempt"], agent=x["agent"], priority=x["priority"],
        created_at=x["created_at"], updated_at=x["updated_at"], ended_at=x["ended_at"],
    )


async def _call(conn: Any, call_id: int) -> CallOut | None:
    c = await conn.fetchrow(Q.call_get, call_id)
    if c is None:
        return None
    events = [dict(e) for e in await conn.fetch(Q.call_events, call_id)]
    base = _summary(c).model_dump()
    return CallOut(
        **base, batch_id=str(c["batch_id"]), target=c["target"], line=c["line"],
        fields=c["fields"], agents=c["agents"], timezone=c["timezone"], events=events,
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is over the {limit // (1024 * 1024)} MB limit", {"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise TooLarge(f"body is over the {limit // (1024 * 1024)} MB limit", {"limit": limit})
        chunks.append(part)
    return b"".join(chunks)


def _clean(v: Any) -> Any:
    if isinstance(v, str):
        # lone UTF-16 surrogates are legal in JSON text but not storable: replace them
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {_clean(k): _clean(x) for k, x in v.items()}
    return v


def loads(body: bytes) -> Any:
    """orjson, with a slow path for JSON that carries unpaired surrogate escapes."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:
            return _clean(json.loads(body))
        except ValueError:
            raise InvalidInput(f"body is not valid JSON: {e}") from None


def _json_submission(body: bytes, target: str | None, default: str, max_leads: int) -> Submission:
    data = loads(body)
    if isinstance(data, dict) and isinstance(data.get("leads"), list):
        if len(data["leads"]) > max_leads:
            raise TooLarge(f"a batch holds at most {max_leads} leads", {"limit": max_leads})
    try:
        batch = BatchIn.model_validate(data)
    except ValidationError as e:
        details = validation_details(list(e.errors()))
        first = details[0]
        raise InvalidInput(f"{first['field']}: {first['message']}", details) from None
    rows: list[dict[str, Any]] = [
        lead.model_dump(exclude_none=True) for lead in batch.leads
    ]
    return Submission(
        target=batch.target or target or default,
        rows=rows,
        result_webhook_url=batch.result_webhook_url,
    )
