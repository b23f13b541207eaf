"""A fake ringme API: queue agents, their HTTP events, and the queue status counters.

Follows ``ringme-queue-agents.txt``, under ``/api/ver1.0`` with ``Authorization: Bearer``:

* ``POST|GET /client/{client_id}/agent/{local|remote}/{agent_id}/event/`` — add / list an
  agent's HTTP events ``{"url", "method": GET|POST, "event_type": agent-login|agent-logout}``
  (``GET|PUT|DELETE .../event/{event_id}`` too). The number of events is limited.
* ``GET /client/{client_id}/agent/{local|remote}/`` and ``GET|PUT .../{agent_id}`` — agents;
  a ``PUT`` with a new ``status`` (``available`` | ``logged_out``) fires the agent's events.
* ``GET /extension/{extension_id}/queue/status/`` — ``answered_members``,
  ``trying_members``, ``waiting_members``.

Events fire only when the status *changes*; a GET event carries the data in the query
string, a POST event as an ``application/x-www-form-urlencoded`` body. Deliveries run in
the background; ``await fake.drain()`` waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import FakeServer

PREFIX = "/api/ver1.0"
EVENT_TYPES = ("agent-login", "agent-logout")
_STATUS_EVENT = {"available": "agent-login", "logged_out": "agent-logout"}


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


@dataclass
class Delivery:
    event_type: str
    method: str
    url: str
    data: dict[str, str]
    status: int | None = None
    error: str | None = None


class FakeRingme(FakeServer):
    def __init__(self, token: str = "ringme-test-token",
                 client_id: str = "12", max_events: int = 20) -> None:
        self.token = token
        self.client_id = client_id
        self.max_events = max_events
        self.agents: dict[str, dict[str, Any]] = {}  # agent id -> agent (with "type")
        self.events: dict[int, dict[str, Any]] = {}
        self.counters: dict[str, dict[str, int]] = {}
        self.deliveries: list[Delivery] = []
        self.requests: list[tuple[str, str]] = []
        self._event_ids = itertools.count(150)
        self._pending: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        base = PREFIX + "/client/{client_id}/agent/{kind}"
        self.app = Starlette(routes=[
            Route(base + "/", self._list_agents, methods=["GET"]),
            Route(base + "/{agent_id}", self._agent, methods=["GET", "PUT"]),
            Route(base + "/{agent_id}/event/", self._events, methods=["GET", "POST"]),
            Route(base + "/{agent_id}/event/{event_id}", self._event, methods=["GET", "PUT", "DELETE"]),
            Route(PREFIX + "/extension/{extension_id}/queue/status/", self._queue_status, methods=["GET"]),
        ])

    @property
    def api_url(self) -> str:
        return self.url + PREFIX

    # -- test controls ---------------------------------------------------------------------------
    def add_local_agent(self, agent_id: str, extension_name: str, status: str = "logged_out") -> None:
        self.agents[agent_id] = {"id": int(agent_id), "type": "local", "name": extension_name,
                                 "extension_name": extension_name, "status": status,
                                 "busy_delay_time": 0, "call_timeout": 0, "no_answer_delay_time": 0,
                                 "reject_delay_time": 0, "wrap_up_time": 0, "extra_params": ""}

    def add_remote_agent(self, agent_id: str, number: str, status: str = "logged_out") -> None:
        self.agents[agent_id] = {"id": int(agent_id), "type": "remote", "name": number, "number": number,
                                 "status": status, "busy_delay_time": 0, "call_timeout": 0,
                                 "no_answer_delay_time": 0, "reject_delay_time": 0, "wrap_up_time": 0,
                                 "extra_params": ""}

    def phone(self, agent_id: str, status: str) -> None:
        """The agent logs in/out with the command from their phone."""
        self._set_status(agent_id, status, "phone")

    def resend_last(self) -> None:
        """Deliver the last event again (a provider retry): a repeat for the receiver."""
        d = self.deliveries[-1]
        self._deliver(d.event_type, d.method, d.url, dict(d.data))

    async def drain(self) -> None:
        """Wait until every event fired so far has been delivered (or failed)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        async with super().running() as url:
            self._http = httpx.AsyncClient(timeout=10)
            try:
                yield url
            finally:
                with contextlib.suppress(Exception):
                    await self.drain()
                await self._http.aclose()
                self._http = None

    # -- events ----------------------------------------------------------------------------------
    def _set_status(self, agent_id: str, status: str, source: str) -> None:
        agent = self.agents[agent_id]
        if agent["status"] == status:
            return  # "Events are generated only when the status changes"
        agent["status"] = status
        event_type = _STATUS_EVENT[status]
        data = {"agent_status": status, "agent_type": agent["type"], "event_source": source,
                "agent_id": str(agent["id"])}
        if agent["type"] == "local":
            data["extension_name"] = agent["extension_name"]
        else:
            data["agent_number"] = agent["number"]
        for ev in self.events.values():
            if ev["agent_id"] == agent_id and ev["event_type"] == event_type:
                self._deliver(event_type, ev["method"], ev["url"], data)

    def _deliver(self, event_type: str, method: str, url: str, data: dict[str, str]) -> None:
        d = Delivery(event_type, method, url, data)
        self.deliveries.append(d)

        http = self._http
        assert http is not None, "the fake must be running to deliver events"

        async def send() -> None:
            try:
                if method == "GET":
                    resp = await http.get(url, params=data)
                else:
                    resp = await http.post(url, content=urlencode(data), headers={
                        "content-type": "application/x-www-form-urlencoded"})
                d.status = resp.status_code
            except httpx.HTTPError as e:
                d.error = f"{type(e).__name__}: {e}"

        task = asyncio.get_running_loop().create_task(send())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- plumbing ----------------------------------------------------------------------------------
    def _check(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "invalid_token")
        cid = request.path_params.get("client_id")
        if cid is not None and cid not in (self.client_id, "@me"):
            return _error(403, "forbidden")
        return None

    def _the_agent(self, request: Request) -> dict[str, Any] | None:
        a = self.agents.get(request.path_params["agent_id"])
        if a is None or a["type"] != request.path_params["kind"]:
            return None
        return a

    @staticmethod
    def _public(a: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in a.items() if k != "type"}

    # -- routes ------------------------------------------------------------------------------------
    async def _list_agents(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        kind = request.path_params["kind"]
        return _json(200, [self._public(a) for a in self.agents.values() if a["type"] == kind])

    async def _agent(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        agent = self._the_agent(request)
        if agent is None:
            return _error(404, "agent not found")
        if request.method == "PUT":
            body = orjson.loads(await request.body() or b"{}")
            status = body.pop("status", None)
            if status is not None and status not in _STATUS_EVENT:
                return _error(400, "status must be 'available' or 'logged_out'")
            for k, v in body.items():
                if k in agent and k not in ("id", "type"):
                    agent[k] = v
            if status is not None:
                self._set_status(request.path_params["agent_id"], status, "api")
        return _json(200, self._public(agent))

    async def _events(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        agent = self._the_agent(request)
        if agent is None:
            return _error(404, "agent not found")
        agent_id = request.path_params["agent_id"]
        if request.method == "GET":
            return _json(200, [self._event_out(e) for e in self.events.values() if e["agent_id"] == agent_id])
        body = orjson.loads(await request.body() or b"{}")
        bad = self._bad_event(body)
        if bad:
            return _error(400, bad)
        if len(self.events) >= self.max_events:
            return _error(400, "limit of tracked events reached")
        eid = next(self._event_ids)
        self.events[eid] = {"id": eid, "agent_id": agent_id, "url": body["url"],
                            "method": body["method"], "event_type": body["event_type"]}
        return _json(200, self._event_out(self.events[eid]))

    async def _event(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        try:
            ev = self.events.get(int(request.path_params["event_id"]))
        except ValueError:
            ev = None
        if ev is None or ev["agent_id"] != request.path_params["agent_id"]:
            return _error(404, "event not found")
        if request.method == "DELETE":
            del self.events[ev["id"]]
            return Response(status_code=204)
        if request.method == "PUT":
            body = {**ev, **orjson.loads(await request.body() or b"{}")}
            bad = self._bad_event(body)
            if bad:
                return _error(400, bad)
            ev.update({k: body[k] for k in ("url", "method", "event_type")})
        return _json(200, self._event_out(ev))

    @staticmethod
    def _bad_event(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be an object"
        for k in ("url", "method", "event_type"):
            if not body.get(k):
                return f"{k} is required"
        if body["method"] not in ("GET", "POST"):
            return "method must be GET or POST"
        if body["event_type"] not in EVENT_TYPES:
            return "event_type must be agent-login or agent-logout"
        return None

    @staticmethod
    def _event_out(e: dict[str, Any]) -> dict[str, Any]:
        return {"url": e["url"], "id": e["id"], "method": e["method"], "event_type": e["event_type"]}

    async def _queue_status(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        c = self.counters.get(request.path_params["extension_id"])
        if c is None:
            return _error(404, "queue not found")
        return _json(200, {"answered_members": c.get("answered_members", 0),
                           "trying_members": c.get("trying_members", 0),
                           "waiting_members": c.get("waiting_members", 0)})
