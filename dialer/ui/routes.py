"""The console's URLs: ``/`` and ``/ui`` lead to ``/ui/``; each page's module brings its
own routes (``auth``, ``batches``, ``downloads``, ``upload``, ``targets``, ``figures``, ``dnc``,
``callbacks``).

Server-rendered (Jinja2); the little JavaScript in ``static/app.js`` only refreshes the
live regions (fragments of the same templates, ``?part=...``), shows times in the
browser's zone and handles drag-and-drop.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from dialer.http.context import AppContext
from dialer.ui import auth, batches, callbacks, dnc, downloads, figures, targets, upload
from dialer.ui.console import Console, UiError
from dialer.ui.render import STATIC

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui_bare() -> Response:
    return RedirectResponse("/ui/", status_code=307)


def mount(app: FastAPI, ctx: AppContext) -> Console:
    """Serve the console under ``/ui/`` (and ``/`` → ``/ui/``), outside the OpenAPI schema."""
    console = Console(ctx)
    app.state.ui = console
    for part in (router, auth.router, batches.router, downloads.router, upload.router,
                 targets.router, figures.router, dnc.router, callbacks.router):
        app.include_router(part)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
    app.add_exception_handler(UiError, console.on_error)
    return console
