"""``/v1/dnc``: add numbers to the do-not-call list (JSON, or a text file: one per line),
or take one off. The list itself is written by ``intake.dnc``, as for the console and the
CLI."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam

from dialer.errors import InvalidInput, NotFound
from dialer.http.bodies import loads, require_type, validated
from dialer.http.context import Ctx
from dialer.http.limits import read_body
from dialer.http.models import DncIn, DncOut, ErrorOut
from dialer.intake import dnc as dnc_list
from dialer.intake import phones

router = APIRouter()

# a DNC file must hold at least one phone-number-like run of digits
_PHONEISH_RE = "[0-9][0-9 ().+-]{5,}[0-9]"
_PHONEISH = re.compile(_PHONEISH_RE.encode())


@router.post(
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
    if require_type(request, "text/plain", "text/csv") in ("text/plain", "text/csv"):
        if _PHONEISH.search(body) is None:
            raise InvalidInput("body: no phone number in it: send one number per line")
        reg = (region or s.targets[s.default_target].default_region).upper()
        if not phones.is_supported_region(reg):
            raise InvalidInput(f"region: unknown region {reg!r}")
        rep = await dnc_list.import_bytes(ctx.pool, body, region=reg, source="api", now=ctx.clock.now(),
                                          targets=s.targets)
        return DncOut(
            added=rep.added, updated=rep.updated,
            invalid=[{"index": x["line"], "number": x["value"], "reason": x["reason"] or "invalid"}
                     for x in rep.invalid_samples],
        )
    payload = validated(DncIn, loads(body))
    if payload.expires_at is not None and payload.expires_at <= ctx.clock.now():
        raise InvalidInput("expires_at: in the past; a listing that has already ended protects no one",
                           [{"field": "expires_at", "message": "in the past"}])
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
    added, updated = await dnc_list.add_numbers(ctx.pool, sorted(set(good)), source="api",
                                                now=ctx.clock.now(), targets=s.targets,
                                                expires_at=payload.expires_at)
    return DncOut(added=added, updated=updated, invalid=invalid)


@router.delete("/dnc/{number}", status_code=204, summary="Remove a number from the do-not-call list")
async def delete_dnc(number: Annotated[str, PathParam(max_length=64)], ctx: Ctx) -> Response:
    s = ctx.settings
    e164, _ = phones.normalise(number, s.targets[s.default_target].default_region)
    if e164 is None:  # not a phone number, so certainly not on the list
        raise NotFound("that number is not on the do-not-call list")
    if not await dnc_list.remove(ctx.pool, e164):
        raise NotFound(f"{phones.mask(e164)} is not on the do-not-call list")
    return Response(status_code=204)
