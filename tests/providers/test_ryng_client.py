"""How a send's answer is read (SPEC §5), against a real local HTTP server: what was
certainly not taken is retried, what may have been taken is uncertain (never resent
blindly), what was refused is rejected; Retry-After in both of its forms."""

from __future__ import annotations

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dialer.providers.ryng.client import MAX_RETRY_AFTER_S, RyngClient
from tests.conftest import free_port
from tests.fakes.server import serve

ANSWERS: dict[str, tuple[int, dict[str, str]]] = {
    "ok": (200, {}),
    "throttled": (429, {"Retry-After": "7"}),
    "throttled-date": (429, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
    "unavailable": (503, {}),
    "error": (500, {}),
    "gateway": (502, {}),
    "moved": (301, {"Location": "https://elsewhere.example/rest-api"}),
    "see-other": (303, {"Location": "https://ryng.example/result/1"}),
    "forever": (429, {"Retry-After": "2299641242"}),
    "infinite": (429, {"Retry-After": "inf"}),
    "bad": (400, {}),
    "forbidden": (403, {}),
}


async def answer(request: Request) -> Response:
    case = request.path_params["case"]
    if case == "slow":
        await anyio.sleep(5)
    status, headers = ANSWERS.get(case, (200, {}))
    return JSONResponse({"case": case}, status, headers=headers)


APP = Starlette(routes=[Route("/rest-api/v1/progressive/queue/{case}/calls", answer, methods=["POST"])])


@pytest.mark.parametrize(("case", "kind"), [
    ("ok", "ok"), ("throttled", "retry"), ("unavailable", "retry"), ("error", "unknown"),
    ("gateway", "unknown"), ("moved", "retry"), ("bad", "rejected"), ("forbidden", "rejected"),
    ("see-other", "unknown"),  # a 303 answers a POST that was processed: maybe taken
    ("forever", "retry"), ("infinite", "retry"),
    ("slow", "unknown"),  # a read timeout: it may have been taken
])
async def test_each_answer_is_read_as_what_it_proves(case: str, kind: str) -> None:
    async with serve(APP) as url:
        client = RyngClient(url, "t", timeout=1)
        try:
            got = await client.append(case, {"customerData": {"jsonData": []}})
        finally:
            await client.close()
    assert got.kind == kind, got
    if case == "throttled":
        assert got.retry_after_s == 7
    if case == "moved":
        assert "elsewhere.example" in (got.error or "")
    if case == "forever":  # capped: a year-long hold would stop every send of the instance
        assert got.retry_after_s == MAX_RETRY_AFTER_S
    if case == "infinite":
        assert got.retry_after_s is None  # not a number of seconds: the usual backoff


async def test_retry_after_as_an_http_date_and_a_refused_connection() -> None:
    async with serve(APP) as url:
        client = RyngClient(url, "t", timeout=1)
        try:
            got = await client.append("throttled-date", {})
        finally:
            await client.close()
    assert got.kind == "retry" and got.retry_after_s is not None and got.retry_after_s > 0
    client = RyngClient(f"http://127.0.0.1:{free_port()}", "t", timeout=1)
    try:
        refused = await client.append("1", {})
    finally:
        await client.close()
    assert refused.kind == "retry"  # nothing reached Ryng: safe to send again
