"""The provider callbacks are served ahead of the app (http/limits.py): same answers,
without FastAPI's middleware and router; everything else still reaches the app."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from dialer.http import callbacks
from dialer.http.limits import HeaderLimit
from dialer.signing import make_token

SECRET = b"edge-secret"


class _App:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_callbacks_are_answered_ahead_of_the_app_and_the_rest_reaches_it() -> None:
    app = _App()
    edge = HeaderLimit(app, fast=callbacks.routes(lambda: None, SECRET))
    async with _client(edge) as c:
        forged = await c.post("/callbacks/ryng/terminal/forged", content=b"{}")
        assert forged.status_code == 401 and forged.json()["error"]["code"] == "unauthorized"
        token = make_token(SECRET, "chunk", 7)
        starting = await c.post(f"/callbacks/ryng/terminal/{token}", content=b"{}")
        assert starting.status_code == 503  # signed, but no callback service yet
        unknown = await c.post(f"/callbacks/ryng/dialled/{token}", content=b"{}")
        assert unknown.status_code == 404
        assert app.paths == []  # none of these went through the app
        assert (await c.get(f"/callbacks/ryng/terminal/{token}")).status_code == 405  # another method
        assert (await c.post("/v1/batches", content=b"{}")).status_code == 405
        assert app.paths == [f"/callbacks/ryng/terminal/{token}", "/v1/batches"]
        crowded = await c.post("/callbacks/ryng/terminal/forged", content=b"{}",
                               headers={f"x-h{i}": "v" for i in range(150)})
        assert crowded.status_code == 431  # the head limits still come first
