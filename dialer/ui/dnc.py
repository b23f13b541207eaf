"""The Do-not-call page: the list (searchable, paged), numbers added by hand or from a
file, and one taken off. Additions go through the same import as the API's text body and
the CLI (``intake.dnc``), so their calls not yet sent are cancelled the same way."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from dialer.errors import Busy, TimedOut
from dialer.http.bodies import content_type
from dialer.intake import dnc as dnc_list
from dialer.intake import phones
from dialer.store.queries import Q
from dialer.ui.console import UI, Console, Flash, Sess, see_other, text_param
from dialer.ui.forms import FormError, StreamedForm, read_form

DNC_PER_PAGE = 50

router = APIRouter(include_in_schema=False)


@router.get("/ui/dnc")
async def dnc(request: Request, ui: UI, s: Sess) -> Response:
    return await _dnc_page(ui, request)


@router.post("/ui/dnc")
async def dnc_add(request: Request, ui: UI, s: Sess) -> Response:
    st = ui.ctx.settings

    def vet(fields: dict[str, str], filename: str) -> None:
        ui.check_csrf(s, fields.get("csrf") or request.headers.get("x-csrf-token"))

    form = StreamedForm()
    try:
        if content_type(request) == "multipart/form-data":
            form = await read_form(request, ui.incoming, st.max_body_bytes, before_file=vet)
        else:
            form.fields = await ui.small_form(request, st.max_body_bytes)
    except FormError as e:
        return await _dnc_page(ui, request, Flash("error", e.message), status=e.status)
    try:
        ui.check_csrf(s, form.fields.get("csrf") or request.headers.get("x-csrf-token"))
        region = (form.fields.get("region") or st.targets[st.default_target].default_region).upper()
        if not phones.is_supported_region(region):
            return await _dnc_page(ui, request, Flash("error", f"Unknown region {region!r}."), status=422)
        text = form.fields.get("numbers", "")
        if not text.strip() and form.file_path is None:
            return await _dnc_page(ui, request, Flash(
                "error", "Type or paste numbers (one per line), or choose a file."), status=422)
        now = ui.ctx.clock.now()
        reports = []
        try:
            if text.strip():
                reports.append(await dnc_list.import_bytes(ui.ctx.pool, text.encode(), region=region,
                                                           source="console", now=now, targets=st.targets))
            if form.file_path is not None:
                reports.append(await dnc_list.import_file(ui.ctx.pool, form.file_path, region=region,
                                                          source="console", now=now, targets=st.targets))
        except (Busy, TimedOut) as e:  # that import stored nothing; the typed numbers, if any, went first
            done = " The numbers typed in were added." if reports else ""
            flash = Flash("error", f"Not imported: {e.message}.{done}")
            return await _dnc_page(ui, request, flash, status=503)
    finally:
        form.discard()
    total: dict[str, Any] = {}
    for rep in reports:
        for k, v in rep.as_dict().items():
            total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
    ok = total.get("added", 0) + total.get("updated", 0)
    kind = "ok" if ok and not total.get("invalid") else ("warn" if ok else "error")
    flash = Flash(kind, f"{total.get('added', 0):,} added, {total.get('updated', 0):,} already listed, "
                        f"{total.get('invalid', 0):,} not valid"
                        + (f"; {total['cancelled_calls']:,} calls not yet sent were cancelled"
                           if total.get("cancelled_calls") else "") + ".")
    return await _dnc_page(ui, request, flash, report=total)


@router.post("/ui/dnc/remove")
async def dnc_remove(request: Request, ui: UI, s: Sess) -> Response:
    fields = await ui.small_form(request)
    ui.check_csrf(s, fields.get("csrf"))
    st = ui.ctx.settings
    region = st.targets[st.default_target].default_region
    e164, why = phones.normalise(fields.get("number", ""), region)
    back = {"q": fields.get("q", "")}
    if e164 is None:
        return await _dnc_page(ui, request, Flash("error", f"Nothing removed: {why}."), status=422)
    gone = await dnc_list.remove(ui.ctx.pool, e164)
    back["removed" if gone else "missing"] = e164
    return see_other(f"/ui/dnc?{urlencode(back)}")


async def _dnc_page(ui: Console, request: Request, flash: Flash | None = None, status: int = 200,
                    report: dict[str, Any] | None = None) -> Response:
    st = ui.ctx.settings
    q = request.query_params
    search = text_param(q.get("q"), 40)
    after = text_param(q.get("after"), 20)
    digits = "".join(ch for ch in search if ch.isdigit())
    region = st.targets[st.default_target].default_region
    if search:
        e164, _ = phones.normalise(search, region)
        pattern = f"{e164}%" if e164 else f"%{digits}%"
    else:
        pattern = "%"
    async with ui.ctx.pool.acquire() as conn:
        rows = await conn.fetch(Q.ui_dnc_page, pattern, after, DNC_PER_PAGE + 1)
        total = int(await conn.fetchval(Q.ui_dnc_total))
    more = len(rows) > DNC_PER_PAGE
    rows = rows[:DNC_PER_PAGE]
    if flash is None and q.get("removed"):
        flash = Flash("ok", f"{q.get('removed')} was removed from the do-not-call list.")
    elif flash is None and q.get("missing"):
        flash = Flash("warn", f"{q.get('missing')} was not on the do-not-call list.")
    base = {"q": search} if search else {}
    return ui.page(
        request, "dnc.html", status, nav="dnc", title="Do-not-call list", flash=flash, rows=rows,
        total=total, search=search, region=region, report=report,
        next_url=f"?{urlencode(dict(base, after=rows[-1]['e164']))}" if more and rows else None,
        first_url=f"?{urlencode(base)}" if after else None,
        unusable_search=bool(search) and not digits,
    )
