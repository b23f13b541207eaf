"""The CRM-facing API under ``/v1``: bearer auth and known query parameters on every
route, the shared error responses, and one module per resource (``batches``, ``calls``,
``dnc``, ``targets``, ``figures``, ``waiting``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute

from dialer.errors import InvalidInput
from dialer.http import batches, callbacks_api, calls, dnc, figures, targets, waiting
from dialer.http.models import ErrorOut

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or invalid bearer token"},
    404: {"model": ErrorOut, "description": "Not found"},
    422: {"model": ErrorOut, "description": "Malformed request"},
    503: {"model": ErrorOut,
          "description": "The database is unreachable for now, or the daemon is shutting down; for a "
                         "batch or a do-not-call file, a lock stayed held past its wait (busy) or a "
                         "step ran past its time limit (timed_out), and nothing of it was stored: "
                         "send the same request again after Retry-After seconds",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying",
                                      "schema": {"type": "integer"}}}},
}


async def known_query_only(request: Request) -> None:
    """A misspelt or repeated query parameter is an error, not silently ignored."""
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
    # every parameter takes one value: a repeated one is not silently cut to its last
    repeated = sorted(k for k in request.query_params if len(request.query_params.getlist(k)) > 1)
    if repeated:
        raise InvalidInput(f"query parameter {repeated[0]!r} given more than once")


def router(auth: Any) -> APIRouter:
    r = APIRouter(prefix="/v1", dependencies=[Depends(auth), Depends(known_query_only)], responses=ERRORS)
    for part in (batches, calls, callbacks_api, dnc, targets, figures, waiting):
        r.include_router(part.router)
    return r
