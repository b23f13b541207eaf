"""The ASGI app: the CRM API, health endpoints and ``/metrics`` on one listener."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import Response

from dialer import __version__, metrics
from dialer.http import errors
from dialer.http.api import router
from dialer.http.auth import TokenCheck
from dialer.http.context import AppContext
from dialer.http.errors import ORJSONResponse
from dialer.http.models import BatchIn, DncIn, Health, ScheduleIn
from dialer.store import migrate
from dialer.ui import mount as mount_ui

DESCRIPTION = """
Progressive outbound dialing. Post lead batches, follow their calls, manage the
do-not-call list. Every `/v1` route needs `Authorization: Bearer <token>`.
Errors are `{"error": {"code", "message", "details"}}`.
"""


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(
        title="dialer",
        version=__version__,
        description=DESCRIPTION,
    )
    app.state.ctx = ctx
    errors.install(app)
    tokens = [t.get_secret_value() for t in ctx.settings.api_tokens]
    app.state.token_check = check = TokenCheck(tokens)  # also for /v1 paths no route has (errors.py)
    app.include_router(router(check))
    mount_ui(app, ctx)  # the sales-ops console: /ui/... and / -> /ui/ (not in the OpenAPI schema)

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Any:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        summary="Ready: database reachable, migrations current, not draining",
        responses={503: {"model": Health, "description": "Not ready"}},
    )
    async def readyz(request: Request) -> Any:
        checks: dict[str, str] = {}
        ok = True
        try:
            async with ctx.pool.acquire(timeout=2) as conn:
                pending = await migrate.pending(conn)
            checks["database"] = "ok"
            checks["migrations"] = "ok" if not pending else f"{len(pending)} pending"
            ok = not pending
        except Exception as e:
            checks["database"] = f"unreachable: {type(e).__name__}"
            ok = False
        checks["draining"] = "yes" if ctx.draining else "no"
        ok = ok and not ctx.draining
        body = Health(status="ok" if ok else "not ready", checks=checks)
        return ORJSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        m = metrics.for_context(ctx)
        return Response(await m.exposition(ctx), media_type=metrics.CONTENT_TYPE)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        extra = BatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in extra.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps["BatchIn"] = extra
        dnc = DncIn.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in dnc.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps["DncIn"] = dnc
        comps["ScheduleIn"] = ScheduleIn.model_json_schema(ref_template="#/components/schemas/{model}")
        _known_values(schema, sorted(ctx.settings.targets))
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        for path, ops in schema.get("paths", {}).items():
            if path.startswith("/v1/"):
                for op in ops.values():
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


def _known_values(schema: dict[str, Any], targets: list[str]) -> None:
    """Say in the schema which targets and regions exist, so a client (or a fuzzer) knows
    that any other value is refused."""
    import phonenumbers

    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    comps = schema["components"]["schemas"]
    comps["BatchIn"]["properties"]["target"] = {
        "anyOf": [{"type": "string", "enum": targets}, {"type": "null"}],
        "description": "Target name; default_target if absent",
    }
    comps["DncIn"]["properties"]["region"] = {
        "anyOf": [{"type": "string", "enum": regions}, {"type": "null"}],
        "description": "Region for national numbers (default: the default target's)",
    }
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            for p in op.get("parameters", []):
                if p.get("name") == "target" or (p.get("name") == "name" and "/targets/" in path):
                    p["schema"] = {"anyOf": [{"type": "string", "enum": targets}, {"type": "null"}]} \
                        if p.get("in") == "query" else {"type": "string", "enum": targets}
                elif p.get("name") == "region" and p.get("in") == "query":
                    p["schema"] = {"anyOf": [{"type": "string", "enum": regions}, {"type": "null"}]}
