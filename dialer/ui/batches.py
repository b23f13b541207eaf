"""The Batches list and a batch's page: progress, outcomes, its calls (paged, searchable),
the rows it rejected, and cancelling it.

Live regions reload fragments of the same templates (``?part=rows|summary|calls``).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from dialer.http.figures import batch_figures_out
from dialer.intake import phones
from dialer.intake.batches import cancelled_while_receiving
from dialer.lifecycle import moves, observe
from dialer.store.queries import Q
from dialer.ui.console import UI, Console, Flash, Sess, UiError, int_param, see_other, text_param
from dialer.ui.figures import hour_chart
from dialer.ui.render import as_dict, batch_active, outcome_chart, progress, source_label

BATCHES_PER_PAGE = 20
CALLS_PER_PAGE = 50
REJECTED_PER_PAGE = 100
ENDED_COUNTS_KEPT = 5000

router = APIRouter(include_in_schema=False)


@router.get("/ui/")
async def home(request: Request, ui: UI, s: Sess) -> Response:
    return await _batches_page(ui, request)


@router.get("/ui/batches")
async def batches(request: Request, ui: UI, s: Sess) -> Response:
    return await _batches_page(ui, request)


@router.get("/ui/batches/{batch_id}")
async def batch(request: Request, batch_id: str, ui: UI, s: Sess) -> Response:
    q = request.query_params
    part = q.get("part")
    search = text_param(q.get("q"), 100)
    after, before = int_param(q.get("after")), int_param(q.get("before"))
    rafter = int_param(q.get("rafter"))
    async with ui.ctx.pool.acquire() as conn:
        b = await find_batch(conn, batch_id)
        by_state = {x["state"]: x["n"] for x in await conn.fetch(Q.batch_call_counts, b["id"])}
        view = _batch_view(b, by_state)
        data: dict[str, Any] = dict(view=view, nav="batches", search=search,
                                    title=f"Batch {view['source']}")
        if part in (None, "summary"):
            data["outcomes"] = {x["outcome"]: x["n"]
                                for x in await conn.fetch(Q.batch_outcome_counts, b["id"])}
            data["chart"] = outcome_chart(by_state)
        if part in (None, "calls"):
            data.update(await _calls(ui, conn, b, search, after, before))
        if part is None:
            rej = await conn.fetch(Q.ui_batch_rejected_page, b["id"], rafter, REJECTED_PER_PAGE + 1)
            data["rejected_rows"] = _with_numbers_left_out(rej[:REJECTED_PER_PAGE])
            more = len(rej) > REJECTED_PER_PAGE
            data["rejected_next"] = rej[REJECTED_PER_PAGE - 1]["line"] if more else None
            data["rafter"] = rafter
            data["flash"] = _batch_flash(q)
    if part is None:  # the campaign figures: once per page load, not on the live refreshes
        data["figures"] = await batch_figures_out(ui.ctx, b["id"])
        data["figures_chart"] = hour_chart(data["figures"].answer_rate_by_hour)
    if part == "summary":
        return ui.page(request, "_batch_summary.html", **data)
    if part == "calls":
        return ui.page(request, "_batch_calls.html", **data)
    return ui.page(request, "batch.html", **data)


@router.post("/ui/batches/{batch_id}/cancel")
async def cancel(request: Request, batch_id: str, ui: UI, s: Sess) -> Response:
    fields = await ui.small_form(request)
    ui.check_csrf(s, fields.get("csrf"))
    now = ui.ctx.clock.now()
    async with ui.ctx.pool.acquire() as conn, conn.transaction():
        b = await find_batch(conn, batch_id)
        ended = await moves.cancel_batch(conn, b["id"], now, "console")
    observe.ended(ended)  # counted in dialer_call_outcomes like an API cancel
    return see_other(f"/ui/batches/{b['id']}?cancelled={len(ended)}")


async def find_batch(conn: Any, batch_id: str) -> Any:
    """The batch row of a URL's id, or a 404 page."""
    try:
        bid = uuid.UUID(batch_id)
    except ValueError:
        raise UiError(404, "There is no such batch. It may have been typed wrong.") from None
    b = await conn.fetchrow(Q.batch_get, bid)
    if b is None:
        raise UiError(404, f"There is no batch {bid}.")
    return b


async def _batches_page(ui: Console, request: Request) -> Response:
    page = int_param(request.query_params.get("page"), 1, 1, 10**6)
    async with ui.ctx.pool.acquire() as conn:
        rows = await conn.fetch(Q.ui_batches_page, BATCHES_PER_PAGE, (page - 1) * BATCHES_PER_PAGE)
        total = int(await conn.fetchval(Q.ui_batches_total))
        counts = await _batch_counts(ui, conn, list(rows))
    items = [_batch_view(b, counts[b["id"]]) for b in rows]
    pages = max(1, -(-total // BATCHES_PER_PAGE))
    data: dict[str, Any] = dict(
        items=items, page=page, pages=pages, total=total, active=any(i["active"] for i in items),
        live_url=f"/ui/batches?page={page}&part=rows", inbox=str(ui.ctx.settings.inbox),
        default_target=ui.ctx.settings.default_target,
        nav="batches", title="Batches",
    )
    if request.query_params.get("part") == "rows":
        return ui.page(request, "_batches_rows.html", **data)
    return ui.page(request, "batches.html", **data)


async def _batch_counts(ui: Console, conn: Any, batches: list[Any]) -> dict[uuid.UUID, dict[str, int]]:
    """Calls by state of each batch; an ended batch's are counted once and remembered."""
    cache = ui.ended_counts
    out: dict[uuid.UUID, dict[str, int]] = {}
    todo = []
    for b in batches:
        cached = cache.get(b["id"])
        if cached is not None:
            out[b["id"]] = cached
        else:
            todo.append(b["id"])
            out[b["id"]] = {}
    if todo:
        for r in await conn.fetch(Q.ui_batches_call_counts, todo):
            out[r["batch_id"]][r["state"]] = r["n"]
    for b in batches:
        if b["ended_at"] is not None and b["id"] not in cache:
            if len(cache) > ENDED_COUNTS_KEPT:
                cache.clear()
            cache[b["id"]] = out[b["id"]]
    return out


def _batch_view(b: Any, by_state: dict[str, int]) -> dict[str, Any]:
    p = progress(by_state)
    return {
        "b": b, "id": str(b["id"]), "source": source_label(b["source"], b["source_name"]),
        "counts": as_dict(b["counts"]), "by_state": by_state, "progress": p,
        "active": batch_active(b["state"], by_state),
        # big batches cost more to count: poll them less often
        "interval": 1500 if p.total < 50_000 else 5000,
        "rejected": sum(as_dict(b["counts"]).get(k, 0) for k in ("invalid", "duplicate", "dnc")),
        "cancelled_receiving": cancelled_while_receiving(b),
    }


def _batch_flash(q: Any) -> Flash | None:
    if q.get("cancelled") is not None:
        n = int_param(q.get("cancelled"))
        return Flash("ok", f"Batch cancelled: {n:,} call{'s' if n != 1 else ''} not yet sent "
                           "will not be dialed. Calls already with the provider finish normally.")
    up = q.get("upload")
    name = (q.get("name") or "the file")[:200]
    if up == "ingested":
        return Flash("ok", f"{name} was received. Its report is below; the calls start now.")
    if up == "duplicate":
        return Flash("warn", f"{name} has the same content as this batch, received before: "
                             "nothing was ingested again.")
    if up == "cancelled":
        return Flash("warn", f"{name}: this batch was cancelled while the file was being received. "
                             "None of its leads will be dialed; its report says how many rows were read.")
    return None


def _with_numbers_left_out(rows: list[Any]) -> list[Any]:
    """Rejected rows, and for an accepted lead each of its numbers left out (by column)."""
    out: list[Any] = []
    for r in rows:
        if r["state"] in ("invalid", "duplicate", "dnc"):
            out.append(r)
            continue
        for note in (r["number_notes"] or {}).get("rejected", []):
            out.append({"line": r["line"], "raw_number": note["number"], "state": note["outcome"],
                        "reason": f"{note['reason']} (the lead is dialed on its other numbers)"})
    return out


async def _calls(ui: Console, conn: Any, b: Any, search: str, after: int, before: int) -> dict[str, Any]:
    """One page of the batch's calls (keyset paging by id, either way), optionally searched."""
    pattern = e164 = None
    if search:
        pattern = f"%{_escape_like(search)}%"
        targets = ui.ctx.settings.targets
        region = targets[b["target"]].default_region if b["target"] in targets else "US"
        e164, _ = phones.normalise(search, region)
    limit = CALLS_PER_PAGE
    if before:
        rows = await conn.fetch(Q.ui_batch_calls_before, b["id"], before, limit + 1, pattern, e164)
        has_prev = len(rows) > limit
        rows = rows[1:] if has_prev else rows
        has_next = True
    else:
        rows = await conn.fetch(Q.ui_batch_calls_after, b["id"], after, limit + 1, pattern, e164)
        has_next = len(rows) > limit
        rows = rows[:limit]
        has_prev = after > 0
    base = {"q": search} if search else {}
    live = dict(base, part="calls")
    if after:
        live["after"] = str(after)
    if before:
        live["before"] = str(before)
    prev_q = urlencode(dict(base, before=rows[0]["id"])) if has_prev and rows else None
    next_q = urlencode(dict(base, after=rows[-1]["id"])) if has_next and rows else None
    return {
        "calls": rows,
        "prev_url": f"?{prev_q}#calls" if prev_q else None,
        "next_url": f"?{next_q}#calls" if next_q else None,
        "first_url": f"?{urlencode(base)}#calls" if (after or before) else None,
        "calls_live_url": f"/ui/batches/{b['id']}?{urlencode(live)}",
    }


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
