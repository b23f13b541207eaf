"""The Ryng sandbox over real loopback HTTP: its API, its dialing and its callbacks.

The sandbox runs under uvicorn on a free port; callbacks go to a small real Starlette
receiver (one for the session, one path prefix per test) that records every delivery
and can be told to answer 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from dialer.providers.ryng.sandbox import RyngSandbox, SandboxConfig, serve
from tests.conftest import free_port, start_and_wait

TOKEN = "sandbox-token"
QUEUE = "/rest-api/v1/progressive/queue/42/calls"
CAMPAIGN = "/rest-api/v1/campaign"
FAST: dict[str, Any] = {"time_scale": 0.001, "seed": 7}
DISPOSITIONS = {"ANSWERED", "NO_ANSWER", "BUSY", "UNREACHABLE"}


# --------------------------------------------------------------------------- helpers
async def until(cond: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll ``cond`` until it is truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handling alone
        yield

    async def main_loop(self) -> None:  # uvicorn's loop, ticking every 10 ms instead of 100 ms
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def run_app(app: Any) -> AsyncIterator[str]:
    server = _QuietServer(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="error",
                                         timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), what="uvicorn start")
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def ts(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


@dataclass
class Hit:
    index: int
    kind: str
    body: dict[str, Any]
    status: int
    at: float
    wall: datetime


@dataclass
class Channel:
    """One test's callback URLs on the shared receiver."""

    base: str
    prefix: str
    receiver: Receiver

    @property
    def connect_url(self) -> str:
        return f"{self.base}/{self.prefix}/connect"

    @property
    def terminal_url(self) -> str:
        return f"{self.base}/{self.prefix}/terminal"

    def hits(self, kind: str | None = None, event: str | None = None) -> list[Hit]:
        return [h for h in self.receiver.hits.get(self.prefix, [])
                if (kind is None or h.kind == kind) and (event is None or h.body.get("event") == event)]

    def fail(self, kind: str, times: int) -> None:
        """Answer 500 to the next ``times`` deliveries of ``kind`` (-1: forever)."""
        self.receiver.failures[(self.prefix, kind)] = times

    def urls(self) -> dict[str, str]:
        return {"connectCallbackUrl": self.connect_url, "terminalCallbackUrl": self.terminal_url}


@dataclass
class Receiver:
    base: str = ""
    hits: dict[str, list[Hit]] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    prefixes: itertools.count[int] = field(default_factory=itertools.count)

    async def handle(self, request: Request) -> Response:
        prefix, kind = request.path_params["prefix"], request.path_params["kind"]
        body = await request.json()
        left = self.failures.get((prefix, kind), 0)
        status = 500 if left else 200
        if left > 0:
            self.failures[(prefix, kind)] = left - 1
        self.hits.setdefault(prefix, []).append(Hit(next(self.counter), kind, body, status, time.monotonic(),
                                                    datetime.now(UTC)))
        return JSONResponse({"ok": status == 200}, status_code=status)

    def channel(self) -> Channel:
        return Channel(self.base, f"t{next(self.prefixes)}", self)


@pytest.fixture(scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/{prefix}/{kind}", rec.handle, methods=["POST"])])
    async with run_app(app) as base:
        rec.base = base
        yield rec


@pytest.fixture
def channel(receiver: Receiver) -> Channel:
    return receiver.channel()


@dataclass
class Sandbox:
    sandbox: RyngSandbox
    url: str
    client: httpx.AsyncClient

    async def append(self, rows: list[dict[str, Any]], channel: Channel | None = None, queue: str = "42",
                     **params: Any) -> httpx.Response:
        data: dict[str, Any] = {"jsonData": rows, **(channel.urls() if channel else {})}
        return await self.client.post(f"/rest-api/v1/progressive/queue/{queue}/calls",
                                      json={**params, "customerData": data})

    async def campaign(self, rows: list[dict[str, Any]], channel: Channel | None = None,
                       **params: Any) -> httpx.Response:
        data: dict[str, Any] = {"jsonData": rows, **(channel.urls() if channel else {})}
        return await self.client.post(CAMPAIGN, json={**params, "customerData": data})

    def ended(self, n: int) -> Callable[[], bool]:
        return lambda: self.sandbox.stats()["calls"]["ended"] >= n


SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def make_sandbox() -> AsyncIterator[SandboxFactory]:
    async with contextlib.AsyncExitStack() as stack:
        async def make(**config: Any) -> Sandbox:
            sb = RyngSandbox(SandboxConfig(**{**FAST, **config}))
            await sb.start()
            stack.push_async_callback(sb.stop)
            url = await stack.enter_async_context(run_app(sb.app))
            stack.push_async_callback(sb.stop)  # before the server stops: releases hanging requests
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, headers={"x-access-token": TOKEN}, timeout=10))
            return Sandbox(sb, url, client)

        yield make


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[Sandbox]:
    """One sandbox for the many validation cases (none of them queues anything)."""
    sb = RyngSandbox(SandboxConfig(**FAST))
    await sb.start()
    try:
        async with run_app(sb.app) as url, httpx.AsyncClient(
                base_url=url, headers={"x-access-token": TOKEN}, timeout=10) as client:
            yield Sandbox(sb, url, client)
    finally:
        await sb.stop()


def leads(n: int, tag: str = "r", start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    return [{"number": f"+1415555{start + i:04d}", "customField10": f"{tag}-{start + i}", **extra}
            for i in range(n)]


# --------------------------------------------------------------------------- API checks
async def test_token_is_checked(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox()
    body = {"customerData": {"jsonData": leads(1)}}
    async with httpx.AsyncClient(base_url=s.url) as anon:
        missing = await anon.post(QUEUE, json=body)
        wrong = await anon.post(QUEUE, json=body, headers={"x-access-token": "nope"})
        campaign = await anon.post(CAMPAIGN, json=body, headers={"x-access-token": "nope"})
    for r in (missing, wrong, campaign):
        assert r.status_code == 401
        assert r.json() == {"status": "error", "message": "invalid or missing x-access-token"}
    stats = s.sandbox.stats()
    assert stats["calls"]["total"] == 0
    assert stats["requests"] == {"queue_append": {"401": 2}, "campaign_create": {"401": 1}}


def _rows(*rows: Any) -> dict[str, Any]:
    return {"customerData": {"jsonData": list(rows)}}


OK_ROW = {"number": "+14155550100"}

QUEUE_400 = [
    ({}, "customerData is required"),
    ({"customerData": []}, "customerData must be an object (got array)"),
    ({"customerData": {}}, "customerData.jsonData is required (or customerData.campaignID)"),
    ({"customerData": {"jsonData": {}}}, "customerData.jsonData must be an array (got object)"),
    ({"customerData": {"jsonData": []}}, "customerData.jsonData must contain at least one call"),
    ({"customerData": {"jsonData": [OK_ROW], "extra": 1}},
     "customerData: unknown parameter 'extra' (allowed: campaignID, connectCallbackUrl, jsonData, "
     "terminalCallbackUrl)"),
    ({"agentMapping": "round", **_rows(OK_ROW)},
     "agentMapping must be one of global, inline, all-agents (got 'round')"),
    ({"agentMapping": "global", **_rows(OK_ROW)},
     "agents is required (a non-empty array of usernames) when agentMapping is global"),
    ({"agentMapping": "global", "agents": [], **_rows(OK_ROW)},
     "agents is required (a non-empty array of usernames) when agentMapping is global"),
    ({"agents": "alice", **_rows(OK_ROW)}, "agents must be an array of agent usernames (got string)"),
    ({"agents": ["alice", 3], **_rows(OK_ROW)}, "agents[1] must be a non-empty string (got number)"),
    ({"agents": ["alice", "dave"], **_rows(OK_ROW)}, "agents[1]: unknown agent 'dave'"),
    ({"legDirection": "both", **_rows(OK_ROW)},
     "legDirection must be one of agent-first, customer-first (got 'both')"),
    ({"maxRetries": -1, **_rows(OK_ROW)}, "maxRetries must be >= 0 (got -1)"),
    ({"maxRetries": 1.5, **_rows(OK_ROW)}, "maxRetries must be a whole number (got 1.5)"),
    ({"retryInterval": "5", **_rows(OK_ROW)}, "retryInterval must be a number (got string)"),
    ({"maxDispose": True, **_rows(OK_ROW)}, "maxDispose must be a number (got boolean)"),
    ({"maxDispose": -0.5, **_rows(OK_ROW)}, "maxDispose must be >= 0 (got -0.5)"),
    ({"name": "x", **_rows(OK_ROW)},
     "unknown parameter 'name' (allowed: agentMapping, agents, customerData, legDirection, maxDispose, "
     "maxRetries, retryInterval)"),
    (_rows(OK_ROW, OK_ROW, OK_ROW, {"priority": 2}), "customerData.jsonData[3].number is required"),
    (_rows({"number": ""}), "customerData.jsonData[0].number is required"),
    (_rows({"number": 4155550100}), "customerData.jsonData[0].number must be a string (got number)"),
    (_rows({"number": "call me"}), "customerData.jsonData[0].number 'call me' is not a phone number"),
    (_rows(OK_ROW, "+14155550101"), "customerData.jsonData[1] must be an object (got string)"),
    (_rows({**OK_ROW, "priority": "high"}), "customerData.jsonData[0].priority must be a number (got string)"),
    (_rows({**OK_ROW, "agentsAssigned": "alice"}),
     "customerData.jsonData[0].agentsAssigned must be an array of agent usernames (got string)"),
    (_rows({**OK_ROW, "agentsAssigned": ["alice", "zed"]}),
     "customerData.jsonData[0].agentsAssigned[1]: unknown agent 'zed'"),
    (_rows({**OK_ROW, "customField1": 5}), "customerData.jsonData[0].customField1 must be a string (got number)"),
    (_rows({**OK_ROW, "customField0": "x"}),
     "customerData.jsonData[0]: unknown field 'customField0' (allowed: number, priority, agentsAssigned, "
     "customField{N})"),
    ({"agentMapping": "inline", **_rows({**OK_ROW, "agentsAssigned": ["bob"]}, OK_ROW)},
     "customerData.jsonData[1].agentsAssigned is required when agentMapping is inline"),
    ({"customerData": {"jsonData": [OK_ROW], "terminalCallbackUrl": "ftp://crm.example/cb"}},
     "customerData.terminalCallbackUrl must be an absolute http or https URL (got 'ftp://crm.example/cb')"),
    ({"customerData": {"jsonData": [OK_ROW], "connectCallbackUrl": "/relative"}},
     "customerData.connectCallbackUrl must be an absolute http or https URL (got '/relative')"),
    ({"customerData": {"jsonData": [OK_ROW], "connectCallbackUrl": 5}},
     "customerData.connectCallbackUrl must be a string (got number)"),
    ({"customerData": {"campaignID": 999}}, "customerData.campaignID 999: no such campaign"),
    ({"customerData": {"campaignID": "7"}}, "customerData.campaignID must be a whole number (got string)"),
    ([OK_ROW], "request body must be a JSON object (got array)"),
]


@pytest.mark.parametrize(("body", "message"), QUEUE_400, ids=[m[:60] for _, m in QUEUE_400])
async def test_append_validation_names_the_field(shared: Sandbox, body: Any, message: str) -> None:
    s = shared
    r = await s.client.post(QUEUE, json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"status": "error", "message": message}
    assert s.sandbox.stats()["calls"]["total"] == 0


async def test_bad_bodies_and_content_types(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox()
    r = await s.client.post(QUEUE, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("request body is not valid JSON")
    r = await s.client.post(QUEUE, content=b"", headers={"content-type": "application/json"})
    assert r.json()["message"] == "request body is empty (expected a JSON object)"
    r = await s.client.post(QUEUE, data={"number": "+14155550100"})
    assert r.status_code == 415
    r = await s.client.post(CAMPAIGN, content=b"number\n+14155550100\n", headers={"content-type": "text/csv"})
    assert r.status_code == 415
    r = await s.client.get(QUEUE)
    assert r.status_code == 405 and r.json()["status"] == "error"
    r = await s.client.post("/rest-api/v1/nothing")
    assert r.status_code == 404 and r.json() == {"status": "error", "message": "not found"}


CAMPAIGN_400 = [
    ({"name": 5, **_rows(OK_ROW)}, "name must be a string (got number)"),
    ({"customFieldNames": {"name": "Name"}, **_rows(OK_ROW)},
     "customFieldNames.name: keys must have the form customField{N}Name"),
    ({"customFieldNames": {"customField1Name": 1}, **_rows(OK_ROW)},
     "customFieldNames.customField1Name must be a string (got number)"),
    ({"customerData": {"campaignID": 1, "jsonData": [OK_ROW]}},
     "customerData: unknown parameter 'campaignID' (allowed: connectCallbackUrl, jsonData, terminalCallbackUrl)"),
    ({"agentMapping": "global", "agents": ["erin"], **_rows(OK_ROW)}, "agents[0]: unknown agent 'erin'"),
]


@pytest.mark.parametrize(("body", "message"), CAMPAIGN_400, ids=[m[:60] for _, m in CAMPAIGN_400])
async def test_campaign_validation(shared: Sandbox, body: Any, message: str) -> None:
    r = await shared.client.post(CAMPAIGN, json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {"status": "error", "message": message}
    assert shared.sandbox.stats()["calls"]["total"] == 0


SHEET_400 = [
    ({}, None, "campaign-sheet is required (a .csv file sent as multipart/form-data)"),
    ({}, b"phone,name\n+14155550100,x\n", "campaign-sheet: the header has no 'number' column (got phone, name)"),
    ({}, b"number\n", "campaign-sheet has no data rows"),
    ({}, b"number,name\n+14155550100,a\n,b\n", "campaign-sheet row 1 (line 3): number is required"),
    ({}, b"number,name\n+14155550100\n", "campaign-sheet row 0 (line 2): expected 2 columns, got 1"),
    ({}, b"number,priority\n+14155550100,high\n",
     "campaign-sheet row 0 (line 2): priority must be a number (got 'high')"),
    ({}, b"number,Name,name\n+14155550100,a,b\n", "campaign-sheet: column 3 repeats the header 'name'"),
    ({"agents": "in-file"}, b"number\n+14155550100\n",
     "campaign-sheet: agents is 'in-file' but the sheet has no agentsAssigned column"),
    ({"agents": "in-file"}, b"number,agentsAssigned\n+14155550100,\n",
     "campaign-sheet row 0 (line 2): agentsAssigned is required when agents is 'in-file'"),
    ({"agents": "in-file"}, b"number,agentsAssigned\n+14155550100,zoe\n",
     "campaign-sheet row 0 (line 2): agentsAssigned: unknown agent 'zoe'"),
    ({"agents": "alice,zoe"}, b"number\n+14155550100\n", "agents: unknown agent 'zoe'"),
    ({"agent": "99"}, b"number\n+14155550100\n", "agent: unknown agent '99'"),
    ({"campaign_name": "x"}, b"number\n+14155550100\n",
     "unknown form field 'campaign_name' (allowed: agent, agents, campaign-name, campaign-sheet, "
     "connectCallbackUrl, customFieldNames, legDirection, maxDispose, maxRetries, retryInterval, "
     "terminalCallbackUrl)"),
    ({"maxRetries": "two"}, b"number\n+14155550100\n", "maxRetries must be a number (got 'two')"),
    ({"terminalCallbackUrl": "nope"}, b"number\n+14155550100\n",
     "terminalCallbackUrl must be an absolute http or https URL (got 'nope')"),
    ({}, b"\xff\xfen\x00u\x00", "campaign-sheet must be UTF-8 encoded CSV"),
]


@pytest.mark.parametrize(("fields", "sheet", "message"), SHEET_400, ids=[m[:60] for *_, m in SHEET_400])
async def test_campaign_sheet_validation(shared: Sandbox, fields: dict[str, str],
                                         sheet: bytes | None, message: str) -> None:
    s = shared
    files = {"campaign-sheet": ("leads.csv", sheet, "text/csv")} if sheet is not None else None
    if files is None:
        files = {"unused": ("x.txt", b"", "text/plain")}  # force multipart without a sheet
        r = await s.client.post(CAMPAIGN, data=fields, files=files)
        assert r.json()["message"] == "form field 'unused' must be text, not a file"
        r = await s.client.post(CAMPAIGN, data={**fields, "campaign-name": "no sheet"})
    else:
        r = await s.client.post(CAMPAIGN, data=fields, files=files)
    assert r.status_code == 400, r.text
    assert r.json() == {"status": "error", "message": message}
    assert s.sandbox.stats()["calls"]["total"] == 0


# --------------------------------------------------------------------------- dialing
async def test_append_six_calls_each_get_one_terminal_callback(make_sandbox: SandboxFactory,
                                                               channel: Channel) -> None:
    s = await make_sandbox()
    r = await s.append(leads(6, "six"), channel, maxRetries=1, retryInterval=0.5)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success" and body["data"]["queueId"] == "42"
    assert body["data"]["callsAdded"] == 6
    ids = [c["callId"] for c in body["data"]["calls"]]
    assert [c["number"] for c in body["data"]["calls"]] == [row["number"] for row in leads(6)]
    assert len(set(ids)) == 6

    await until(lambda: len(channel.hits("terminal")) == 6, what="6 terminal callbacks")
    await until(lambda: s.sandbox.stats()["callbacks"]["terminal"]["delivered"] == 6)
    await until(lambda: s.sandbox.stats()["callbacks"]["connect"]["delivered"] >= 6)
    terminal = {h.body["callId"]: h for h in channel.hits("terminal")}
    assert set(terminal) == set(ids)
    for i, call_id in enumerate(ids):
        t = terminal[call_id].body
        assert t["event"] == "terminated" and t["queueId"] == "42"
        assert t["disposition"] in DISPOSITIONS
        assert t["number"] == f"+1415555{i:04d}" and t["customField10"] == f"six-{i}"
        assert t["attempts"] == s.sandbox.dials_by_number()[t["number"]]
        assert 1 <= t["attempts"] <= 2
        assert ts(t["startTime"]) <= ts(t["endTime"])
        assert isinstance(t["talkTime"], int)
        assert ("recordingUrl" in t) == (t["disposition"] == "ANSWERED")
        if t["disposition"] != "ANSWERED":
            assert t["talkTime"] == 0
        connects = [h for h in channel.hits("connect") if h.body["callId"] == call_id]
        assert [h.body["attempts"] for h in connects] == list(range(1, t["attempts"] + 1))
        assert all(h.body["event"] == "agent_assigned" for h in connects)
        assert all(h.index < terminal[call_id].index for h in connects), "connect callbacks come first"
        assert connects[0].body["customField10"] == f"six-{i}"
    # round-robin within the request, in row order
    assert [terminal[i].body["agent"] for i in ids] == ["alice", "bob", "carol"] * 2
    stats = s.sandbox.stats()
    assert stats["calls"]["ended"] == 6 and stats["calls"]["active"] == 0
    assert sum(stats["calls"]["dispositions"].values()) == 6
    assert stats["callbacks"]["terminal"]["delivered"] == 6
    assert stats["callbacks"]["terminal"]["sent"] == 6
    assert stats["dial_attempts"] == sum(s.sandbox.dials_by_number().values())


async def test_max_dispose_between_an_agents_calls(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(answer_rate=1, no_answer_rate=0, busy_rate=0, unreachable_rate=0)
    await s.append(leads(4, "md"), channel, agentMapping="global", agents=["bob"], maxDispose=40)
    await until(lambda: len(channel.hits("terminal")) == 4)
    assigned = {h.body["callId"]: ts(h.body["timestamp"]) for h in channel.hits("connect")}
    ends = sorted((ts(h.body["endTime"]), h.body["callId"]) for h in channel.hits("terminal"))
    starts = sorted(assigned.values())
    assert all(h.body["agent"] == "bob" for h in channel.hits("terminal"))
    for (end, _), nxt in zip(ends, starts[1:], strict=False):
        assert (nxt - end).total_seconds() >= 0.040 - 0.001  # maxDispose 40 s x 0.001
    # the same from the sandbox's own attempt log
    history = sorted((ts(a["startTime"]), ts(a["endTime"])) for c in s.sandbox.calls() for a in c["history"])
    for (_, end), (start, _) in itertools.pairwise(history):
        assert (start - end).total_seconds() >= 0.039


async def test_priority_order_then_arrival(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(default_max_dispose_s=0)
    priorities = [1, 5, 3, 5, 0, 3.5]
    rows = [{**row, "priority": p} for row, p in zip(leads(6, "prio"), priorities, strict=True)]
    r = await s.append(rows, channel, agentMapping="global", agents=["carol"])
    ids = [c["callId"] for c in r.json()["data"]["calls"]]
    await until(lambda: len(channel.hits("terminal")) == 6)
    assigned = sorted(channel.hits("connect"), key=lambda h: ts(h.body["timestamp"]))  # deliveries overlap
    assert [h.body["callId"] for h in assigned] == [ids[i] for i in (1, 3, 5, 2, 0, 4)]
    assert [h.body["priority"] for h in assigned] == [5, 5, 3.5, 3, 1, 0]


async def test_inline_agent_mapping(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox()
    assigned = [["carol"], ["bob", "carol"], ["carol"], ["alice"], ["alice", "bob"], ["bob", "carol"]]
    rows = [{**row, "agentsAssigned": a} for row, a in zip(leads(6, "inl"), assigned, strict=True)]
    r = await s.append(rows, channel, agentMapping="inline", agents=["alice"])  # agents ignored for inline
    ids = [c["callId"] for c in r.json()["data"]["calls"]]
    await until(lambda: len(channel.hits("terminal")) == 6)
    agent_of = {h.body["callId"]: h.body["agent"] for h in channel.hits("terminal")}
    for call_id, allowed in zip(ids, assigned, strict=True):
        assert agent_of[call_id] in allowed
    # one rotation over the account's agents, each row taking the next agent it allows
    assert [agent_of[i] for i in ids] == ["carol", "bob", "carol", "alice", "bob", "carol"]


async def test_global_mapping_round_robin_over_listed_agents(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox()
    r = await s.append(leads(5, "glob"), agentMapping="global", agents=["carol", "alice"])
    ids = [c["callId"] for c in r.json()["data"]["calls"]]
    agents = {c["callId"]: c["agent"] for c in s.sandbox.calls()}
    assert [agents[i] for i in ids] == ["carol", "alice", "carol", "alice", "carol"]


async def test_round_robin_never_crosses_requests(make_sandbox: SandboxFactory) -> None:
    """The campaign page's case study: single-lead campaigns without an agent all go to
    the first agent; naming one (by id in form-data, or username) works around it."""
    s = await make_sandbox(default_max_dispose_s=0)
    single: list[str] = []
    for i in range(3):
        r = await s.campaign(leads(1, "solo", start=i))
        assert r.status_code == 200
        single.append(r.json()["data"]["calls"][0]["callId"])
    for i in range(2):
        files = {"campaign-sheet": (f"xt{i}.csv", f"number,Name\n+1415666{i:04d},James\n".encode(), "text/csv")}
        r = await s.client.post(CAMPAIGN, files=files)
        single.append(r.json()["data"]["calls"][0]["callId"])
    r = await s.append(leads(1, "q1", start=10))
    single.append(r.json()["data"]["calls"][0]["callId"])
    files = {"campaign-sheet": ("xt250.csv", b"number,Name\n+14156660250,Philip\n", "text/csv")}
    named_by_id = (await s.client.post(CAMPAIGN, data={"agent": "20"}, files=files)).json()["data"]["calls"][0]
    named = (await s.campaign(leads(1, "named", start=20), agentMapping="global", agents=["carol"])).json()
    bulk = (await s.campaign(leads(3, "bulk", start=30))).json()["data"]["calls"]
    agents = {c["callId"]: c["agent"] for c in s.sandbox.calls()}
    assert [agents[i] for i in single] == ["alice"] * 6
    assert agents[named_by_id["callId"]] == "bob"
    assert agents[named["data"]["calls"][0]["callId"]] == "carol"
    assert [agents[c["callId"]] for c in bulk] == ["alice", "bob", "carol"]
    await until(s.ended(10))


async def test_busy_is_retried_max_retries_times(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(answer_rate=0, no_answer_rate=0, busy_rate=1, unreachable_rate=0)
    await s.append(leads(1, "busy"), channel, maxRetries=2, retryInterval=1, maxDispose=0)
    await until(lambda: channel.hits("terminal"))
    (t,) = [h.body for h in channel.hits("terminal")]
    assert t["disposition"] == "BUSY" and t["attempts"] == 3 and t["talkTime"] == 0
    assert s.sandbox.dials_by_number() == {"+14155550000": 3}
    assigned = [h.body for h in channel.hits("connect")]
    assert [b["attempts"] for b in assigned] == [1, 2, 3]
    (call,) = s.sandbox.calls()
    assert [a["outcome"] for a in call["history"]] == ["BUSY"] * 3
    for a, b in itertools.pairwise(call["history"]):
        assert (ts(b["startTime"]) - ts(a["endTime"])).total_seconds() >= 0.060 - 0.001  # 1 min x 0.001
    stats = s.sandbox.stats()
    assert stats["outcomes"] == {"BUSY": 3} and stats["dial_attempts"] == 3


async def test_no_retry_without_max_retries(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(answer_rate=0, no_answer_rate=1, busy_rate=0, unreachable_rate=0)
    await s.append(leads(2, "nr"), channel)
    await until(lambda: len(channel.hits("terminal")) == 2)
    assert {h.body["disposition"] for h in channel.hits("terminal")} == {"NO_ANSWER"}
    assert {h.body["attempts"] for h in channel.hits("terminal")} == {1}


async def test_campaign_milestones_and_leg_direction(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(answer_rate=1, no_answer_rate=0, busy_rate=0, unreachable_rate=0)
    r = await s.campaign(leads(1, "af"), channel, name="CRM lead 1",
                         customFieldNames={"customField10Name": "ref"})
    cid = r.json()["data"]["campaignId"]
    assert isinstance(cid, int) and r.json()["data"]["name"] == "CRM lead 1"
    await until(lambda: channel.hits("terminal"))
    await until(lambda: len(channel.hits("connect")) == 3)
    events = [h.body["event"] for h in channel.hits("connect")]
    # the page's three milestones: agent picks up, customer picks up, call termination
    assert events == ["agent_answered", "customer_answered", "terminated"]
    assert all(h.body["campaignId"] == cid and h.body["campaignName"] == "CRM lead 1" for h in channel.hits())
    assert channel.hits("connect")[-1].body == channel.hits("terminal")[0].body

    other = channel.receiver.channel()
    await s.campaign(leads(1, "cf", start=1), other, legDirection="customer-first")
    await until(lambda: len(other.hits("connect")) == 3)
    assert [h.body["event"] for h in other.hits("connect")] == [
        "customer_answered", "agent_answered", "terminated"]


async def test_campaign_sheet_upload(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(answer_rate=1, no_answer_rate=0, busy_rate=0, unreachable_rate=0)
    sheet = ("\ufeffnumber,Name,Product,agentsAssigned,priority,customField10\r\n"
             "+14155551001,James,Life Insurance,carol,1,XT243\r\n"
             '+14155551002,Philip,"Motor, Insurance","bob;carol",9,XT250\r\n'
             "\r\n"
             "+14155551003,Ann,Home,10,,XT251\r\n").encode()
    files = {"campaign-sheet": ("leads.csv", sheet, "text/csv")}
    fields = {"agents": "in-file", "campaign-name": "sheet-1", **channel.urls()}
    r = await s.client.post(CAMPAIGN, data=fields, files=files)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["name"] == "sheet-1" and data["callsAdded"] == 3
    await until(lambda: len(channel.hits("terminal")) == 3)
    by_number = {h.body["number"]: h.body for h in channel.hits("terminal")}
    james, philip, ann = (by_number[f"+1415555100{i}"] for i in (1, 2, 3))
    assert (james["customField1"], james["customField2"], james["customField10"]) == (
        "James", "Life Insurance", "XT243")
    assert philip["customField2"] == "Motor, Insurance"
    assert james["agent"] == "carol" and philip["agent"] in ("bob", "carol")
    assert ann["agent"] == "alice"  # agent id 10 is the first agent
    assert james["campaignId"] == data["campaignId"] and philip["priority"] == 9
    assert ann["priority"] == 0

    # the same sheet appended to a queue by campaignID
    again = await s.client.post(QUEUE, json={"customerData": {"campaignID": data["campaignId"]}})
    assert again.status_code == 200 and again.json()["data"]["callsAdded"] == 3
    assert s.sandbox.submissions_by_ref("customField10") == {"XT243": 2, "XT250": 2, "XT251": 2}
    # inline mapping takes each row's agents from the campaign too
    inline = await s.client.post(QUEUE, json={"agentMapping": "inline",
                                              "customerData": {"campaignID": data["campaignId"]}})
    assert inline.status_code == 200
    agents = {c["callId"]: c["agent"] for c in s.sandbox.calls()}
    assert [agents[c["callId"]] for c in inline.json()["data"]["calls"]] == ["carol", "bob", "alice"]
    plain = (await s.campaign(leads(1, "plain"))).json()["data"]["campaignId"]
    r = await s.client.post(QUEUE, json={"agentMapping": "inline", "customerData": {"campaignID": plain}})
    assert r.status_code == 400
    assert r.json()["message"] == (f"customerData.campaignID {plain}: row 0 has no agentsAssigned "
                                   "(required when agentMapping is inline)")


# --------------------------------------------------------------------------- callback retries
async def test_terminal_callback_retried_until_200(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox()
    channel.fail("terminal", 2)
    await s.append(leads(1, "t2"), channel)
    await until(lambda: s.sandbox.stats()["callbacks"]["terminal"]["delivered"] == 1)
    hits = channel.hits("terminal")
    assert [h.status for h in hits] == [500, 500, 200]
    assert hits[0].body == hits[1].body == hits[2].body
    for a, b in itertools.pairwise(hits):
        assert b.at - a.at >= 0.060 - 0.002  # 1-minute intervals, scaled
    cb = s.sandbox.stats()["callbacks"]["terminal"]
    assert (cb["sent"], cb["delivered"], cb["failed"], cb["retried"], cb["given_up"]) == (3, 1, 2, 2, 0)


async def test_terminal_callback_given_up_after_three(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox()
    channel.fail("terminal", -1)
    await s.append(leads(1, "tx"), channel)
    await until(lambda: s.sandbox.stats()["callbacks"]["terminal"]["given_up"] == 1)
    assert [h.status for h in channel.hits("terminal")] == [500, 500, 500]
    assert s.sandbox.stats()["callbacks"]["terminal"]["sent"] == 3


async def test_connect_callback_retried_once(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox()
    channel.fail("connect", -1)
    await s.append(leads(1, "cx"), channel)
    await until(lambda: s.sandbox.stats()["callbacks"]["connect"]["given_up"] == 1)
    await until(lambda: channel.hits("terminal"))
    assert [h.status for h in channel.hits("connect")] == [500, 500]
    assert channel.hits("terminal")[0].status == 200
    cb = s.sandbox.stats()["callbacks"]["connect"]
    assert (cb["sent"], cb["failed"], cb["given_up"]) == (2, 2, 1)


async def test_unreachable_callback_url_counts_as_failure(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox()
    dead = "http://127.0.0.1:9/cb"  # discard port: connection refused
    r = await s.client.post(QUEUE, json={"customerData": {"jsonData": leads(1, "dead"),
                                                          "terminalCallbackUrl": dead}})
    assert r.status_code == 200
    await until(lambda: s.sandbox.stats()["callbacks"]["terminal"]["given_up"] == 1)
    cb = s.sandbox.stats()["callbacks"]["terminal"]
    assert cb["sent"] == 3 and cb["statuses"] == {"ConnectError": 3}


async def test_duplicate_and_late_callbacks(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(duplicate_callback_rate=1, answer_rate=0, no_answer_rate=1, busy_rate=0,
                           unreachable_rate=0)
    await s.append(leads(1, "dup"), channel)
    await until(lambda: len(channel.hits("terminal")) == 2)
    first, second = channel.hits("terminal")
    assert first.body == second.body
    await until(lambda: len(channel.hits("connect")) == 2)
    assert s.sandbox.stats()["callbacks"]["terminal"]["duplicates"] == 1

    late = channel.receiver.channel()
    s.sandbox.configure(duplicate_callback_rate=0, late_callback_rate=1)
    await s.append(leads(1, "late", start=1), late)
    await until(lambda: late.hits("terminal"), timeout=5)
    (hit,) = late.hits("terminal")
    held = hit.wall - ts(hit.body["endTime"])
    assert held.total_seconds() >= 0.300 - 0.005  # 5 minutes x 0.001
    assert s.sandbox.stats()["callbacks"]["terminal"]["late"] == 1


# --------------------------------------------------------------------------- API faults
async def test_throttle_answers_429_with_retry_after(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox(throttle_rate=1, retry_after_s=3)
    r = await s.append(leads(2, "thr"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    assert r.json()["status"] == "error"
    stats = s.sandbox.stats()
    assert stats["calls"]["total"] == 0 and stats["faults"] == {"throttle": 1}
    assert stats["requests"]["queue_append"] == {"429": 1}
    assert s.sandbox.submissions_by_ref("customField10") == {}


async def test_server_errors_queue_nothing(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox(error_rate=1, seed=3)
    statuses: set[int] = set()
    for i in range(12):
        r = await s.append(leads(1, "err", start=i))
        statuses.add(r.status_code)
        if r.status_code == 502:
            assert r.headers["content-type"].startswith("text/html")
    assert statuses == {500, 502, 503}
    assert s.sandbox.stats()["calls"]["total"] == 0
    assert s.sandbox.stats()["faults"] == {"error": 12}


async def test_accept_then_fail_queues_the_calls(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox(accept_then_fail_rate=1, seed=5)
    outcomes: list[str] = []
    for i in range(8):
        try:
            r = await s.append(leads(1, "atf", start=i), channel)
            assert r.status_code in (500, 502, 504), r.status_code  # never 503: that says "not taken"
            outcomes.append("5xx")
        except httpx.RemoteProtocolError:
            outcomes.append("drop")
    assert set(outcomes) == {"5xx", "drop"}
    assert s.sandbox.submissions_by_ref("customField10") == {f"atf-{i}": 1 for i in range(8)}
    await until(lambda: len(channel.hits("terminal")) == 8, what="the accepted calls are dialed")
    stats = s.sandbox.stats()
    assert stats["faults"] == {"accept_then_fail": 8}
    assert stats["requests"]["queue_append"].get("dropped") == outcomes.count("drop")

    s.sandbox.configure(accept_then_fail_mode="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        await s.campaign(leads(1, "atf-c", start=50))
    assert s.sandbox.submissions_by_ref("customField10")["atf-c-50"] == 1


async def test_timeout_hangs_and_queues_nothing(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox(timeout_rate=1, timeout_hang_s=30)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await s.client.post(QUEUE, json={"customerData": {"jsonData": leads(1, "to")}}, timeout=0.3)
    assert time.monotonic() - started < 5
    assert s.sandbox.stats()["faults"] == {"timeout": 1}
    r = await s.client.post("/_sandbox/config", json={"timeout_rate": 0, "latency_s": 0.05})
    assert r.status_code == 200 and r.json()["config"]["timeout_rate"] == 0
    started = time.monotonic()
    r = await s.append(leads(1, "to"))
    assert r.status_code == 200 and time.monotonic() - started >= 0.05
    assert s.sandbox.submissions_by_ref("customField10") == {"to-0": 1}


async def test_timeout_after_hang_answers_504_or_drops(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox(timeout_rate=1, timeout_hang_s=0.02, seed=11)
    seen: set[str] = set()
    for i in range(10):
        try:
            r = await s.append(leads(1, "hang", start=i))
            assert r.status_code == 504
            seen.add("504")
        except httpx.RemoteProtocolError:
            seen.add("drop")
    assert seen == {"504", "drop"}
    assert s.sandbox.stats()["calls"]["total"] == 0


# --------------------------------------------------------------------------- counters, admin, mounting
async def test_dials_and_submissions_are_counted(make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox()
    await s.append(leads(3, "cnt"), channel)
    await s.append(leads(1, "cnt", start=1), channel)  # the same reference and number again
    await until(lambda: len(channel.hits("terminal")) == 4)
    assert s.sandbox.submissions_by_ref("customField10") == {"cnt-0": 1, "cnt-1": 2, "cnt-2": 1}
    assert s.sandbox.submissions_by_ref("number")["+14155550001"] == 2
    assert s.sandbox.submissions_by_ref("customField3") == {}
    dials = s.sandbox.dials_by_number()
    assert dials["+14155550001"] == 2 and dials["+14155550000"] == 1


async def test_admin_endpoints(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox()
    await s.append(leads(2, "adm"))
    async with httpx.AsyncClient(base_url=s.url) as anon:
        stats = (await anon.get("/_sandbox/stats")).json()
        assert stats["requests"]["queue_append"] == {"200": 1}
        assert stats["calls"]["total"] == 2
        assert set(stats["agents"]) == {"alice", "bob", "carol"} and stats["agents"]["bob"]["id"] == 20
        assert "token" not in stats["config"]
        calls = (await anon.get("/_sandbox/calls")).json()
        assert [c["customField10"] for c in calls] == ["adm-0", "adm-1"]
        assert {"callId", "number", "state", "attempts", "agent", "history"} <= set(calls[0])
        assert (await anon.get("/_sandbox/calls", params={"limit": 1})).json()[0]["customField10"] == "adm-0"
        bad = await anon.post("/_sandbox/config", json={"token": "x"})
        assert bad.status_code == 400 and bad.json()["message"] == "token cannot be changed at run time"
        bad = await anon.post("/_sandbox/config", json={"error_rate": 2})
        assert bad.json()["message"] == "error_rate must be between 0 and 1"
        ok = await anon.post("/_sandbox/config", json={"ring_s": [0, 1], "busy_rate": 0.5})
        assert ok.json()["config"]["ring_s"] == [0.0, 1.0]
    assert s.sandbox.config.busy_rate == 0.5
    await until(s.ended(2))
    ended = await s.client.get("/_sandbox/calls", params={"state": "ended"})
    assert len(ended.json()) == 2


async def test_unknown_queue_when_queues_configured(make_sandbox: SandboxFactory) -> None:
    s = await make_sandbox(queues=["42"])
    assert (await s.append(leads(1, "q"))).status_code == 200
    r = await s.append(leads(1, "q"), queue="43")
    assert r.status_code == 404 and r.json()["message"] == "queue '43' not found"


async def test_works_mounted_under_a_prefix(receiver: Receiver) -> None:
    sb = RyngSandbox(SandboxConfig(**FAST))
    channel = receiver.channel()
    outer = Starlette(routes=[Mount("/_sandbox/ryng", app=sb.app)])
    await sb.start()
    try:
        async with run_app(outer) as url, httpx.AsyncClient(base_url=url + "/_sandbox/ryng",
                                                             headers={"x-access-token": TOKEN}) as c:
            r = await c.post("rest-api/v1/progressive/queue/7/calls",
                             json={"customerData": {"jsonData": leads(2, "mnt"), **channel.urls()}})
            assert r.status_code == 200 and r.json()["data"]["queueId"] == "7"
            await until(lambda: len(channel.hits("terminal")) == 2)
            assert (await c.get("_sandbox/stats")).json()["calls"]["ended"] == 2
            assert (await c.post("rest-api/v1/nothing")).status_code == 404
    finally:
        await sb.stop()
        await sb.stop()  # idempotent


async def test_serve_runs_until_cancelled() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = asyncio.create_task(serve(SandboxConfig(**FAST), "127.0.0.1", port))

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"http://127.0.0.1:{port}/_sandbox/stats")).status_code == 200
        except httpx.TransportError:
            return False

    deadline = time.monotonic() + 10
    while not await up():
        assert not task.done() and time.monotonic() < deadline, "serve() did not come up"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await up()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="agents"):
        RyngSandbox(SandboxConfig(agents=[]))
    with pytest.raises(ValueError, match="busy_rate must be >= 0"):
        RyngSandbox(SandboxConfig(busy_rate=-1))
    with pytest.raises(ValueError, match="error_rate must be between 0 and 1"):
        RyngSandbox(SandboxConfig(error_rate=1.5))
    RyngSandbox(SandboxConfig(answer_rate=6, no_answer_rate=2, busy_rate=1, unreachable_rate=1))  # weights
    with pytest.raises(ValueError, match="time_scale must be > 0"):
        RyngSandbox(SandboxConfig(time_scale=0))


async def test_customer_first_calls_are_abandoned_at_the_configured_rate(make_sandbox: SandboxFactory,
                                                                          channel: Channel) -> None:
    sb = await make_sandbox(answer_rate=1, no_answer_rate=0, busy_rate=0, unreachable_rate=0, abandon_rate=1.0)
    rows = [{"number": f"+1415555{i:04d}"} for i in range(3)]
    r = await sb.append(rows, channel, legDirection="customer-first")
    assert r.status_code == 200, r.text
    await until(sb.ended(3), what="3 calls ended")
    r = await sb.append([{"number": "+14155559999"}], channel)  # agent-first: never abandoned
    await until(sb.ended(4), what="4 calls ended")
    await until(lambda: len(channel.hits("terminal")) == 4, what="4 terminal callbacks")
    words = sorted(h.body["disposition"] for h in channel.hits("terminal"))
    assert words == ["ABANDONED", "ABANDONED", "ABANDONED", "ANSWERED"]
    assert all(h.body["talkTime"] == 0 for h in channel.hits("terminal") if h.body["disposition"] == "ABANDONED")
    # the request log: arrival time, endpoint, status and calls queued, in order
    log = (await sb.client.get("/_sandbox/requests")).json()
    assert [(x["endpoint"], x["status"], x["calls"]) for x in log] == [("queue_append", "200", 3),
                                                                      ("queue_append", "200", 1)]
    assert log[0]["at"] <= log[1]["at"]


async def test_abandons_are_off_by_default_and_checked(make_sandbox: SandboxFactory) -> None:
    sb = await make_sandbox()
    assert sb.sandbox.config.abandon_rate == 0.0
    with pytest.raises(ValueError, match="abandon_rate must be between 0 and 1"):
        sb.sandbox.configure(abandon_rate=2)


async def test_the_timeline_shows_each_agent_offered_its_next_call_after_its_dispose_time(
        make_sandbox: SandboxFactory, channel: Channel) -> None:
    s = await make_sandbox()
    await s.append(leads(3, "tl"), channel, agentMapping="global", agents=["bob"], maxDispose=40)
    await until(lambda: len(channel.hits("terminal")) == 3, what="3 terminal callbacks")
    await until(lambda: len([e for e in s.sandbox.timeline() if e[1] == "ready"]) == 3, what="3 ready")
    events = s.sandbox.timeline()
    assert [e[1] for e in events if e[1] == "request"] == ["request"]
    assert next(e for e in events if e[1] == "request")[3] == "queue:3"
    bob = [(e[1], e[3]) for e in events if e[2] == "bob" and e[1] in ("offered", "ended", "ready")]
    ids = [c["callId"] for c in s.sandbox.calls()]
    assert bob == [(kind, call) for call in ids for kind in ("offered", "ended", "ready")]
    at = {(e[1], e[3]): e[0] for e in events}
    for a, b in itertools.pairwise(ids):
        assert at[("ready", a)] - at[("ended", a)] >= 0.040 - 0.001  # maxDispose 40 s x 0.001
        assert at[("offered", b)] >= at[("ready", a)]
    assert {e[3] for e in events if e[1] == "terminal"} == set(ids)
    async with httpx.AsyncClient(base_url=s.url) as anon:
        later = (await anon.get("/_sandbox/timeline", params={"since": at[("ready", ids[0])]})).json()
        assert later["now"] >= events[-1][0]
        assert [tuple(e) for e in later["events"]] == [e for e in events if e[0] >= at[("ready", ids[0])]]
        assert (await anon.get("/_sandbox/timeline", params={"since": "x"})).status_code == 400


# --------------------------------------------------------------------------- restarts
ALWAYS_ANSWERED: dict[str, Any] = {"answer_rate": 1, "no_answer_rate": 0, "busy_rate": 0, "unreachable_rate": 0}


@pytest.mark.parametrize("keep", ["file", "memory"])
async def test_calls_under_way_at_stop_are_carried_on_by_the_next_start(
        make_sandbox: SandboxFactory, channel: Channel, tmp_path: Path, keep: str) -> None:
    """A real Ryng dials on while our process restarts: the next start ends the calls that
    were being dialed (same outcome, not dialed again) and dials those still waiting."""
    config: dict[str, Any] = {"agents": ["alice", "bob"], "time_scale": 0.01, "ring_s": (1, 1),
                              "talk_s": (150, 150), **ALWAYS_ANSWERED}
    if keep == "file":  # a new process: a new sandbox reading the state file
        config["state_file"] = str(tmp_path / "ryng.json")
    a = await make_sandbox(**config)
    r = await a.append(leads(3, "rs"), channel)
    ids = [c["callId"] for c in r.json()["data"]["calls"]]
    await until(lambda: a.sandbox.stats()["callbacks"]["connect"]["delivered"] == 2, what="both agents on a call")
    await a.sandbox.stop()
    assert not channel.hits("terminal")
    if keep == "file":
        b = await make_sandbox(**config)
    else:
        b = a
        await a.sandbox.start()
    await until(lambda: len(channel.hits("terminal")) == 3, what="3 terminal callbacks after the restart")
    await until(lambda: b.sandbox.stats()["calls"]["ended"] == 3)
    terminal = channel.hits("terminal")
    assert sorted(h.body["callId"] for h in terminal) == sorted(ids)  # each once
    assert {h.body["disposition"] for h in terminal} == {"ANSWERED"}
    connects = channel.hits("connect")
    assert sorted(h.body["callId"] for h in connects) == sorted(ids)  # each assigned once
    assert sum(b.sandbox.dials_by_number().values()) == (1 if keep == "file" else 3)  # only the waiting one
    stats = b.sandbox.stats()["calls"]
    assert (stats["active"], stats["queued"]) == (0, 0)
    if keep == "file":
        assert stats["reloaded"] == 3 and stats["total"] == 3


async def test_a_callback_retry_pending_at_stop_is_sent_after_the_next_start(
        make_sandbox: SandboxFactory, channel: Channel, tmp_path: Path) -> None:
    config: dict[str, Any] = {"state_file": str(tmp_path / "ryng.json"), "time_scale": 0.01,
                              "ring_s": (1, 1), "talk_s": (1, 1), **ALWAYS_ANSWERED}
    a = await make_sandbox(**config)
    channel.fail("terminal", 1)
    await a.append(leads(1, "rt"), channel)
    await until(lambda: a.sandbox.stats()["callbacks"]["terminal"]["retrying"] == 1,
                what="the first terminal try answered 500")
    await a.sandbox.stop()
    b = await make_sandbox(**config)
    await until(lambda: b.sandbox.stats()["callbacks"]["terminal"]["delivered"] == 1, what="the retry")
    hits = channel.hits("terminal")
    assert [h.status for h in hits] == [500, 200] and hits[0].body == hits[1].body
    assert hits[1].at - hits[0].at >= 0.6 - 0.002  # still a 1-minute interval (scaled) apart
    cb = b.sandbox.stats()["callbacks"]["terminal"]
    assert (cb["sent"], cb["retried"]) == (1, 1)
    assert not b.sandbox.dials_by_number()  # the call had ended: not dialed again


async def test_a_killed_sandbox_process_carries_on_from_its_state_file(channel: Channel, tmp_path: Path) -> None:
    """kill -9 gives no chance to write at stop: the file kept up to date while running is
    enough for the next process to end the calls that were under way, without dialing
    them again."""
    state = tmp_path / "ryng.json"
    config = tmp_path / "dialer.toml"
    config.write_text('[sandbox]\nagents = ["alice", "bob", "carol"]\nanswer_rate = 1\nno_answer_rate = 0\n'
                      "busy_rate = 0\nunreachable_rate = 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(DIALER_CONFIG=str(config), DIALER_STATE_DIR=str(tmp_path / "var"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "dialer", "sandbox", "--port", str(port), "--time-scale", "0.05",
            "--state-file", str(state)]

    def start(n: int) -> subprocess.Popen[bytes]:
        return start_and_wait(argv, env, Path.cwd(), tmp_path / f"sandbox-{n}.log", url + "/_sandbox/stats",
                              "the sandbox process")

    first = start(1)
    try:
        async with httpx.AsyncClient(base_url=url, headers={"x-access-token": TOKEN}, timeout=10) as c:
            data: dict[str, Any] = {"jsonData": leads(2, "k9"), **channel.urls()}
            r = await c.post(QUEUE, json={"customerData": data})
        assert r.status_code == 200, r.text
        ids = sorted(x["callId"] for x in r.json()["data"]["calls"])

        def on_call_in_file() -> bool:
            calls = orjson.loads(state.read_bytes())["calls"] if state.exists() else []
            return sorted(x["callId"] for x in calls if x["state"] == "connected") == ids

        # talks last 1-6 s here: the calls are still being dialed when the process dies
        await until(on_call_in_file, what="both calls connected, in the state file")
    finally:
        first.kill()
        first.wait(10)
    assert not channel.hits("terminal")
    second = start(2)
    try:
        await until(lambda: len({h.body["callId"] for h in channel.hits("terminal")}) == 2, timeout=30,
                    what="the terminal callbacks, from the next process")
        stats = httpx.get(url + "/_sandbox/stats", timeout=10).json()
        assert stats["calls"]["reloaded"] == 2 and stats["dial_attempts"] == 0  # ended, not re-dialed
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert {h.body["disposition"] for h in channel.hits("terminal")} == {"ANSWERED"}
    assert sorted(h.body["callId"] for h in channel.hits("connect")) == ids  # assigned once each


async def test_a_damaged_state_file_does_not_stop_the_sandbox(
        make_sandbox: SandboxFactory, channel: Channel, tmp_path: Path) -> None:
    state = tmp_path / "ryng.json"
    state.write_text('{"version": 1, "calls": [{"callId": "x"}]')  # cut short
    s = await make_sandbox(state_file=str(state))
    await s.append(leads(1, "dm"), channel)
    await until(lambda: channel.hits("terminal"), what="a call dialed as usual")
    assert s.sandbox.stats()["calls"]["reloaded"] == 0
