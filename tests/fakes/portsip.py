"""A fake PortSIP PBX call-queue API (``/api/call_queues...``) for tests.

Follows ``portsip-call-queues.txt``: ``Authorization: Bearer`` on every request (401
otherwise), ``skip``/``top`` paging (``top`` 1..100, default 100) with
``{"count", "items"}`` for the queue list and ``{"items"}`` for agents and the waiting
list, one agent's ``status`` at ``/agents/{extension}``, and ``POST`` to set it.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import FakeServer

STATUSES = ("READY", "NOT_READY", "WRAP_UP", "BREAK", "LUNCH", "LOGGED_IN", "LOGGED_OUT")
_ids = itertools.count(700551909773148160)


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"code": status, "message": message})


class FakePortSip(FakeServer):
    def __init__(self, token: str = "portsip-test-token") -> None:
        self.token = token
        self.queues: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, dict[str, Any]]] = {}  # queue id -> extension -> agent
        self.waiting_list: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)
        self.fail_with: int | None = None  # answer every authorised request with this status
        self.ignore_paging_on_agents = False  # like a server that ignores skip/top there
        self.app = Starlette(routes=[
            Route("/api/call_queues", self._list_queues, methods=["GET"]),
            Route("/api/call_queues/{id}", self._get_queue, methods=["GET"]),
            Route("/api/call_queues/{id}/agents", self._agents, methods=["GET", "POST"]),
            Route("/api/call_queues/{id}/agents/{number}", self._agent, methods=["GET", "POST"]),
            Route("/api/call_queues/{id}/waiting", self._waiting, methods=["GET"]),
        ])

    # -- test controls -------------------------------------------------------------------------
    def add_queue(self, name: str, extension_number: str, agents: dict[str, str] | None = None) -> str:
        """A call queue with agents (extension -> status); returns its id."""
        qid = base64.b64encode(str(next(_ids)).encode()).decode()
        self.queues[qid] = {"id": qid, "name": name, "extension_number": extension_number,
                            "ring_time": 20, "polling_strategy": "RING_SIMULTANEOUSLY"}
        self.agents[qid] = {}
        self.waiting_list[qid] = []
        for ext, status in (agents or {}).items():
            self.set_status(qid, ext, status)
        return qid

    def set_status(self, queue_id: str, extension: str, status: str) -> None:
        assert status in STATUSES, status
        a = self.agents[queue_id].setdefault(
            extension, {"extension_number": extension, "display_name": f"Agent {extension}",
                        "skill_level": 1, "status": "LOGGED_OUT"})
        a["status"] = status

    def remove_agent(self, queue_id: str, extension: str) -> None:
        self.agents[queue_id].pop(extension, None)

    def set_waiting(self, queue_id: str, n: int) -> None:
        self.waiting_list[queue_id] = [
            {"session_id": base64.b64encode(f"s{queue_id}{i}".encode()).decode(),
             "extension_number": f"9{i:03d}", "display_name": f"Caller {i}", "waiting_time": i + 1}
            for i in range(n)
        ]

    def count(self, path_suffix: str) -> int:
        return sum(1 for _, p, _ in self.requests if p.endswith(path_suffix))

    # -- plumbing ------------------------------------------------------------------------------------
    def _check(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path, dict(request.query_params)))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Unauthorized")
        if self.fail_with is not None:
            return _error(self.fail_with, "failure injected by the test")
        return None

    @staticmethod
    def _page(request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]] | Response:
        try:
            skip = int(request.query_params.get("skip", "0"))
            top = int(request.query_params.get("top", "100"))
        except ValueError:
            return _error(400, "skip and top must be integers")
        if skip < 0 or not 1 <= top <= 100:
            return _error(400, "top must be between 1 and 100, skip at least 0")
        return items[skip: skip + top]

    # -- routes --------------------------------------------------------------------------------------
    async def _list_queues(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        items = list(self.queues.values())
        search = request.query_params.get("search")
        if search:
            items = [q for q in items if search in q["name"] or search in q["extension_number"]]
        page = self._page(request, items)
        if isinstance(page, Response):
            return page
        return _json(200, {"count": len(items), "items": page})

    async def _get_queue(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        q = self.queues.get(request.path_params["id"])
        return _json(200, q) if q else _error(404, "call queue not found")

    async def _agents(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        qid = request.path_params["id"]
        if qid not in self.queues:
            return _error(404, "call queue not found")
        if request.method == "POST":
            body = orjson.loads(await request.body())
            keep = {str(i["extension_number"]) for i in body.get("items", [])}
            for ext in list(self.agents[qid]):
                if ext not in keep:
                    del self.agents[qid][ext]
            for ext in keep:
                self.agents[qid].setdefault(ext, {"extension_number": ext, "display_name": ext,
                                                  "skill_level": 1, "status": "LOGGED_OUT"})
            return Response(status_code=200)
        items = [{k: a[k] for k in ("extension_number", "display_name", "skill_level")}
                 for a in self.agents[qid].values()]
        if self.ignore_paging_on_agents:
            return _json(200, {"items": items})
        page = self._page(request, items)
        return page if isinstance(page, Response) else _json(200, {"items": page})

    async def _agent(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        qid, number = request.path_params["id"], request.path_params["number"]
        if qid not in self.queues:
            return _error(404, "call queue not found")
        agent = self.agents[qid].get(number)
        if agent is None:
            return _error(404, "agent not found")
        if request.method == "POST":
            status = orjson.loads(await request.body()).get("status")
            if status not in STATUSES:
                return _error(400, f"status must be one of {', '.join(STATUSES)}")
            agent["status"] = status
            return Response(status_code=200)
        return _json(200, dict(agent))

    async def _waiting(self, request: Request) -> Response:
        if (err := self._check(request)) is not None:
            return err
        qid = request.path_params["id"]
        if qid not in self.queues:
            return _error(404, "call queue not found")
        page = self._page(request, self.waiting_list[qid])
        return page if isinstance(page, Response) else _json(200, {"items": page})
