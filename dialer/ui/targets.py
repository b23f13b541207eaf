"""The Targets page: each target's pacing, breaker and waiting calls (by what holds them:
``http.waiting``), and pausing or resuming one — shown and done as the API does
(``http.targets``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from dialer.http.targets import apply_pause, target_views
from dialer.http.waiting import WaitingOut, waiting_out
from dialer.ui.console import UI, Console, Flash, Sess, UiError, see_other
from dialer.ui.session import Session

router = APIRouter(include_in_schema=False)

HOLDS_MAX_AGE_S = 5.0
_HOLDS_KEY = "ui_waiting"


@dataclass(frozen=True, slots=True)
class _Holds:
    at: float  # time.monotonic() of the reading
    holds: dict[str, WaitingOut | None]


@router.get("/ui/targets")
async def targets(request: Request, ui: UI, s: Sess) -> Response:
    ts = await target_views(ui.ctx)
    holds = await _holds(ui, [t.name for t in ts])
    comp = ui.ctx.settings.compliance
    q = request.query_params
    flash = None
    if q.get("done") in ("paused", "resumed") and q.get("target") in ui.ctx.settings.targets:
        flash = Flash("ok", f"Target {q.get('target')} {q.get('done')}.")
    data: dict[str, Any] = dict(targets=ts, holds=holds, compliance=comp, nav="targets", title="Targets",
                                flash=flash, active=True, live_url="/ui/targets?part=list")
    if q.get("part") == "list":
        return ui.page(request, "_targets_list.html", **data)
    return ui.page(request, "targets.html", **data)


async def _holds(ui: Console, names: list[str]) -> dict[str, WaitingOut | None]:
    """Why isn't it dialing, per target: one pass over each target's waiting calls, so the
    live list (polled every few seconds by every open page) reuses a reading up to
    ``HOLDS_MAX_AGE_S`` old; a pause or resume from the console reads again."""
    cached = ui.ctx.extra.get(_HOLDS_KEY)
    if isinstance(cached, _Holds) and time.monotonic() - cached.at < HOLDS_MAX_AGE_S \
            and set(cached.holds) == set(names):
        return dict(cached.holds)
    holds = {n: await waiting_out(ui.ctx, n) for n in names}
    ui.ctx.extra[_HOLDS_KEY] = _Holds(time.monotonic(), holds)
    return holds


@router.post("/ui/targets/{name}/pause")
async def pause(request: Request, name: str, ui: UI, s: Sess) -> Response:
    return await _set_paused(ui, request, name, s, True)


@router.post("/ui/targets/{name}/resume")
async def resume(request: Request, name: str, ui: UI, s: Sess) -> Response:
    return await _set_paused(ui, request, name, s, False)


async def _set_paused(ui: Console, request: Request, name: str, s: Session, paused: bool) -> Response:
    fields = await ui.small_form(request)
    ui.check_csrf(s, fields.get("csrf"))
    if not await apply_pause(ui.ctx, name, paused, "console"):
        raise UiError(404, f"There is no target {name!r}.")
    ui.ctx.extra.pop(_HOLDS_KEY, None)
    done = "paused" if paused else "resumed"
    return see_other(f"/ui/targets?{urlencode({'done': done, 'target': name})}")
