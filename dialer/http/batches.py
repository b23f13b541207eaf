"""``/v1/batches``: submit a batch of leads (JSON or text/csv), read it, page its calls,
cancel it."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from dialer.errors import InvalidInput, NotFound, NotReady, TooLarge
from dialer.http.bodies import content_type, loads, validated
from dialer.http.calls import call_summary
from dialer.http.context import Ctx
from dialer.http.limits import read_body
from dialer.http.models import CSV_HEADER, BatchAccepted, BatchIn, BatchOut, CallsPage, CancelOut, ErrorOut
from dialer.intake.submit import Submission, submit
from dialer.lifecycle import moves, observe
from dialer.results import destinations
from dialer.store.queries import Q

router = APIRouter()


@router.post(
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
                    "description": "A CSV whose header line names a number column (number, "
                                   "phone, phone_number or mobile; any case), among others",
                    # the header line: fields separated by "," ";" or tab, one of them
                    # (maybe quoted) the number column
                    "pattern": CSV_HEADER,
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
    ctype = content_type(request)
    digest = hashlib.sha256(
        ctype.encode() + b"\0" + (target or "").encode() + b"\0" + body
    ).hexdigest()
    if ctype in ("text/csv", "application/csv", "text/plain"):
        sub = Submission(target=target or s.default_target, csv=body)
    elif ctype in ("application/json", ""):
        sub = _json_submission(body, target, s.default_target, s.max_batch_leads,
                               allow_private=s.webhooks_to_private)
    else:
        raise InvalidInput(
            f"content-type {ctype!r} is not supported: send application/json or text/csv"
        )
    sub.idempotency_key = idempotency_key
    sub.request_sha256 = digest
    status, out = await submit(ctx.pool, s, ctx.clock, sub)
    return Response(orjson.dumps(out), status_code=status, media_type="application/json")


@router.get("/batches/{batch_id}", response_model=BatchOut, summary="A batch's state and counts")
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


@router.get("/batches/{batch_id}/calls", response_model=CallsPage, summary="The batch's calls, paged")
async def batch_calls(
    batch_id: uuid.UUID,
    ctx: Ctx,
    cursor: Annotated[str | None, Query(max_length=40, pattern=r"^[0-9]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    # past every id there is nothing: clamp (ids are bigint) rather than refuse a valid cursor
    after = min(int(cursor), 2**62) if cursor else 0
    async with ctx.pool.acquire() as conn:
        if await conn.fetchrow(Q.batch_get, batch_id) is None:
            raise NotFound(f"no batch {batch_id}")
        rows = await conn.fetch(Q.batch_calls_page, batch_id, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return CallsPage(
        calls=[call_summary(x) for x in rows],
        next_cursor=str(rows[-1]["id"]) if more and rows else None,
    )


@router.post("/batches/{batch_id}/cancel", response_model=CancelOut,
             summary="Cancel a batch: its calls not yet sent end as cancelled")
async def cancel_batch(batch_id: uuid.UUID, ctx: Ctx) -> Any:
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.batch_get, batch_id) is None:
            raise NotFound(f"no batch {batch_id}")
        ended = await moves.cancel_batch(conn, batch_id, now, "api")
    observe.ended(ended)
    return CancelOut(batch_id=str(batch_id), cancelled=len(ended))


def _json_submission(body: bytes, target: str | None, default: str, max_leads: int, *,
                     allow_private: bool) -> Submission:
    data = loads(body)
    if isinstance(data, dict) and isinstance(data.get("leads"), list):
        if len(data["leads"]) > max_leads:
            raise TooLarge(f"a batch holds at most {max_leads} leads", {"limit": max_leads})
    batch = validated(BatchIn, data)
    if batch.result_webhook_url is not None:
        why = destinations.url_refusal(batch.result_webhook_url, allow_private=allow_private)
        if why is not None:
            raise InvalidInput(f"result_webhook_url: {why}",
                               [{"field": "result_webhook_url", "message": why}])
    rows: list[dict[str, Any]] = [
        lead.model_dump(exclude_none=True) for lead in batch.leads
    ]
    return Submission(
        target=batch.target if batch.target is not None else (target or default),
        rows=rows,
        result_webhook_url=batch.result_webhook_url,
    )
