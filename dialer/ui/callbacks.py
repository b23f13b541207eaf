"""A call's page (its events, and a *Schedule callback* form) and the *Callbacks* page:
scheduled callbacks overdue, due today and upcoming, per agent. Scheduling goes through
the same rules as the API (``lifecycle.callbacks_scheduled``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from starlette.responses import Response

from dialer.lifecycle import callbacks_listing, callbacks_scheduled
from dialer.lifecycle.callbacks_scheduled import Refused
from dialer.store.queries import Q
from dialer.ui.console import UI, Console, Flash, Sess, UiError, int_param, see_other, text_param

router = APIRouter(include_in_schema=False)

BUCKETS = (("overdue", "Overdue"), ("today", "Due today"), ("upcoming", "Upcoming"))


@router.get("/ui/calls/{call_id}")
async def call_page(request: Request, call_id: str, ui: UI, s: Sess) -> Response:
    return await _call_page(ui, request, int_param(call_id, 0, 1))


@router.post("/ui/calls/{call_id}/schedule")
async def schedule(request: Request, call_id: str, ui: UI, s: Sess) -> Response:
    cid = int_param(call_id, 0, 1)
    fields = await ui.small_form(request)
    ui.check_csrf(s, fields.get("csrf"))
    at = (fields.get("at") or "").strip()
    agent = (fields.get("agent") or "").strip() or None
    if not at:
        return await _call_page(ui, request, cid, Flash("error", "Choose when to call back."), status=422,
                                form={"at": at, "agent": agent or ""})
    try:
        done = await callbacks_scheduled.request(ui.ctx.pool, ui.ctx.settings, cid, at, agent, "console",
                                                 ui.ctx.clock.now())
    except Refused as e:
        if e.code == "not_found":
            raise UiError(404, f"There is no call {cid}.") from None
        status = 409 if e.code in callbacks_scheduled.CONFLICTS else 422
        return await _call_page(ui, request, cid, Flash("error", f"Not scheduled: {e.message}."),
                                status=status, form={"at": at, "agent": agent or ""})
    return see_other(f"/ui/calls/{cid}?{urlencode({'scheduled': done.call_id})}")


async def _call_page(ui: Console, request: Request, call_id: int, flash: Flash | None = None,
                     status: int = 200, form: dict[str, str] | None = None) -> Response:
    async with ui.ctx.pool.acquire() as conn:
        c = await conn.fetchrow(Q.call_get, call_id)
        if c is None:
            raise UiError(404, f"There is no call {call_id}.")
        events = await conn.fetch(Q.call_events, call_id)
        lead = c["lead_id"] or c["id"]
        mine = await callbacks_listing.listing(conn, callbacks_listing.Filter(lead=lead), ui.ctx.clock.now())
    q = request.query_params
    if flash is None and q.get("scheduled", "").isdigit():
        flash = Flash("ok", f"Callback scheduled (call {q.get('scheduled')}).")
    t = ui.ctx.settings.targets.get(c["target"])
    zone = callbacks_scheduled.lead_zone(c["e164"], c["timezone"])
    return ui.page(request, "call.html", status, nav="", title=f"Call {call_id}", flash=flash, c=c,
                   events=events, callbacks=mine, agents=list(t.agents) if t else [], zone=str(zone),
                   form=form or {"at": "", "agent": ""})


@router.get("/ui/callbacks")
async def callbacks_page(request: Request, ui: UI, s: Sess) -> Response:
    q = request.query_params
    st = ui.ctx.settings
    target = q.get("target") or None
    agent = text_param(q.get("agent"), 200) or None
    if target is not None and target not in st.targets:
        target = None
    now = ui.ctx.clock.now()
    async with ui.ctx.pool.acquire() as conn:
        rows = await callbacks_listing.listing(
            conn, callbacks_listing.Filter(target=target, agent=agent, include_done=False,
                                           limit=callbacks_listing.MAX_ROWS), now)
    zones = {name: t.window_timezone for name, t in st.targets.items()}
    groups = bucketed(rows, now, zones)
    owners = sorted({r["owner"] or "" for r in rows})
    per_agent = [(o or "anyone", {k: sum(1 for r in groups[k] if (r["owner"] or "") == o)
                                  for k, _ in BUCKETS}) for o in owners]
    return ui.page(request, "callbacks.html", nav="callbacks", title="Callbacks", groups=groups,
                   buckets=BUCKETS, per_agent=per_agent, targets=sorted(st.targets), target=target or "",
                   agent=agent or "", total=len(rows))


def bucketed(rows: list[dict[str, Any]], now: datetime,
             zones: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Open callbacks: overdue (the owner's grace passed), due today (by the calendar of
    the target's ``window_timezone``: the team's day, not the server's), upcoming
    (later); each by owner, then due time."""
    ends: dict[str, datetime] = {}

    def end_of_day(target: str) -> datetime:
        if target not in ends:
            zone = (zones or {}).get(target) or "UTC"
            local = now.astimezone(ZoneInfo(zone))
            ends[target] = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        return ends[target]

    out: dict[str, list[dict[str, Any]]] = {k: [] for k, _ in BUCKETS}
    for r in rows:
        if r["status"] == "overdue":
            out["overdue"].append(r)
        elif r["status"] == "due" or r["due_at"] < end_of_day(r["target"]):
            out["today"].append(r)
        elif r["status"] == "upcoming":
            out["upcoming"].append(r)
    for k in out:
        out[k].sort(key=lambda r: (r["owner"] or "", r["due_at"], r["call_id"]))
    return out
