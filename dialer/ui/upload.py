"""The Upload page: a lead file goes through the inbox's intake (``FileIngestor``) and is
kept with its report beside it under ``uploads/<day>/``, as the inbox keeps processed files.

The CSRF token is checked before a byte of the file is stored (``forms.read_form``'s
``before_file`` hook), and again once the form is read.
"""

from __future__ import annotations

from urllib.parse import urlencode

import anyio
import asyncpg
from fastapi import APIRouter, Request
from starlette.responses import Response

from dialer.http.bodies import content_type
from dialer.intake.files import FileIngestor, FileOutcome
from dialer.intake.inbox import unique_path
from dialer.intake.readers import detect_format
from dialer.ui.console import UI, Console, Flash, Sess, see_other
from dialer.ui.forms import FormError, StreamedForm, read_form

router = APIRouter(include_in_schema=False)


@router.get("/ui/upload")
async def upload_form(request: Request, ui: UI, s: Sess) -> Response:
    return _upload_page(ui, request)


@router.post("/ui/upload")
async def upload(request: Request, ui: UI, s: Sess) -> Response:
    st = ui.ctx.settings

    def vet(fields: dict[str, str], filename: str) -> None:
        ui.check_csrf(s, fields.get("csrf") or request.headers.get("x-csrf-token"))
        if detect_format(filename) is None:
            raise FormError(415, f"{filename}: only .csv, .xlsx, .json, .ndjson and .jsonl files "
                                 "can be uploaded")

    if ui.ctx.draining:  # intake has stopped: the daemon is shutting down
        msg = "The daemon is shutting down and takes no new files. Try again once it is back."
        return _upload_page(ui, request, Flash("error", msg), status=503)
    if content_type(request) != "multipart/form-data":  # not a file upload: check the token, then say so
        fields = await ui.small_form(request)
        ui.check_csrf(s, fields.get("csrf"))
        msg = "Send the file with the upload form (multipart/form-data)."
        return _upload_page(ui, request, Flash("error", msg), status=415)
    try:
        form = await read_form(request, ui.incoming, st.max_body_bytes, before_file=vet)
    except FormError as e:
        return _upload_page(ui, request, Flash("error", e.message), status=e.status)
    try:
        ui.check_csrf(s, form.fields.get("csrf") or request.headers.get("x-csrf-token"))
        target = form.fields.get("target") or st.default_target
        if form.file_path is None or form.filename is None:
            msg = "Choose a file first (or drop one on the box)."
            return _upload_page(ui, request, Flash("error", msg), status=422, target=target)
        if target not in st.targets:
            return _upload_page(ui, request, Flash("error", f"There is no target {target!r}."),
                                status=422)
        return await _ingest(ui, request, form, target)
    finally:
        form.discard()


def _upload_page(ui: Console, request: Request, flash: Flash | None = None, status: int = 200,
                 target: str | None = None, outcome: FileOutcome | None = None) -> Response:
    st = ui.ctx.settings
    return ui.page(request, "upload.html", status, nav="upload", title="Upload leads", flash=flash,
                   targets=sorted(st.targets), selected=target or st.default_target,
                   limit_mb=st.max_body_mb, inbox=str(st.inbox), outcome=outcome)


async def _ingest(ui: Console, request: Request, form: StreamedForm, target: str) -> Response:
    assert form.file_path is not None and form.filename is not None
    ing = FileIngestor(ui.ctx.pool, ui.ctx.settings, ui.ctx.clock)
    try:
        outcome = await ing.ingest(form.file_path, target, source="api", name=form.filename)
    except asyncpg.LockNotAvailableError:  # its finalise waited its limit for the target's lock
        return _upload_page(ui, request, Flash("warn", f"The target {target!r} is busy finishing "
                                                       "another batch. Nothing from this file is dialed "
                                                       "yet: upload it again in a moment."),
                            status=503, target=target)
    except asyncpg.QueryCanceledError:  # a step of its finalise ran past its batch's time limit
        return _upload_page(ui, request, Flash("error", f"Settling the leads of {form.filename} was stopped: "
                                                        "one of its steps ran past its time limit (the "
                                                        "database may be overloaded). Nothing from this "
                                                        "file is dialed: upload it again later."),
                            status=503, target=target)
    if outcome.kind == "busy":
        return _upload_page(ui, request, Flash("warn", "The same file is being received right now "
                                                       "(another upload or the inbox). Look for it on "
                                                       "the Batches page in a moment."),
                            status=409, target=target)
    if outcome.kind == "failed" or outcome.batch_id is None:
        msg = f"{form.filename} was not ingested: {outcome.error}. Nothing from it will be dialed."
        return _upload_page(ui, request, Flash("error", msg), status=422, target=target, outcome=outcome)
    # keep it, with its report beside it, as the inbox does with processed files
    day = ui.ctx.clock.now().astimezone().date().isoformat()
    dest_dir = ui.state_dir / "uploads" / day
    await anyio.Path(dest_dir).mkdir(parents=True, exist_ok=True)
    dest = unique_path(dest_dir, form.filename)
    await ing.write_report(outcome, dest.with_name(dest.name + ".report.json"))
    await anyio.Path(form.file_path).replace(dest)
    form.file_path = None
    if outcome.kind in ("ingested", "cancelled"):  # cancelled: while it was read (its page says so)
        if outcome.sha256:
            await ing.mark_filed(outcome.sha256, dest)
        if outcome.kind == "ingested":
            ui.ctx.wake_dispatch()
    q = urlencode({"upload": outcome.kind, "name": form.filename})
    return see_other(f"/ui/batches/{outcome.batch_id}?{q}")

