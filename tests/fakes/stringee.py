"""A fake Stringee ICC queue API (``/v1/queue``) and Stringee's call to ``get_list_agents_url``.

Follows ``stringee-icc-queue.txt``: ``X-STRINGEE-AUTH`` carries an HS256 JWT signed with
an API key secret (``iss`` = the key SID, ``exp`` in the future, ``rest_api: true``);
``POST /v1/queue`` creates (``queueID``), ``GET /v1/queue?page=&limit=`` lists (paged),
``PUT /v1/queue/{id}`` updates, ``DELETE /v1/queue/{id}`` deletes. Every answer carries
``r`` (0 = success) and ``message``. A bad token is HTTP 401 with ``r != 0``; a bad body is
HTTP 200 with ``r != 0``.

``await fake.route_calls(calls)`` plays Stringee routing inbound calls: it POSTs
``{"queueId", "calls", "projectId"}`` to the queue's ``get_list_agents_url`` and checks the
answer has the documented ``version: 2`` shape.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dialer.providers.stringee import decode_token
from tests.fakes.server import FakeServer

_BOOL_FIELDS = ("record_calls", "agent_wrap_up_after_calls")
_INT_FIELDS = ("wrap_up_time_limit", "schedule", "wait_agent_answer_timeout", "maximum_queue_size",
               "maximum_queue_wait_time", "cond_routing")
_STR_FIELDS = ("name", "wait_greeting", "hold_greeting", "from_number_callout_to_agent",
               "get_list_agents_url")
_DEFAULTS: dict[str, Any] = {"record_calls": 1, "agent_wrap_up_after_calls": 1, "wrap_up_time_limit": 10,
                             "schedule": 1, "wait_agent_answer_timeout": 15, "wait_greeting": "",
                             "hold_greeting": "", "maximum_queue_size": 5, "maximum_queue_wait_time": 60,
                             "from_number_callout_to_agent": None, "get_list_agents_url": None,
                             "cond_routing": 1, "enable_voicemail": 0}
_ids = itertools.count(1)


def _answer(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


class ShapeError(AssertionError):
    """The get_list_agents_url answer is not the documented version-2 shape."""


class FakeStringee(FakeServer):
    def __init__(self, keys: dict[str, str] | None = None, project: int = 246) -> None:
        self.keys = keys or {"SK_test_key_sid": "stringee-test-key-secret"}
        self.project = project
        self.queues: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body or query)
        self.now = time.time
        self.app = Starlette(routes=[
            Route("/v1/queue", self._queue_root, methods=["GET", "POST"]),
            Route("/v1/queue/{id}", self._queue_one, methods=["PUT", "DELETE"]),
        ])

    # -- plumbing --------------------------------------------------------------------------------
    def _auth(self, request: Request) -> Response | None:
        token = request.headers.get("x-stringee-auth", "")
        if not token:
            return _answer({"r": 2, "message": "X-STRINGEE-AUTH header is missing"}, 401)
        for sid, secret in self.keys.items():
            payload = decode_token(token, secret)
            if payload is None or payload.get("iss") != sid:
                continue
            exp = payload.get("exp")
            if not isinstance(exp, int | float) or exp < self.now():
                return _answer({"r": 2, "message": "access token expired"}, 401)
            if payload.get("rest_api") is not True:
                return _answer({"r": 2, "message": "access token is not a REST API token"}, 401)
            return None
        return _answer({"r": 2, "message": "invalid access token"}, 401)

    def _fields(self, body: dict[str, Any], creating: bool) -> dict[str, Any] | str:
        out: dict[str, Any] = {}
        if creating and not body.get("name"):
            return "name is required"
        for k, v in body.items():
            if k in _BOOL_FIELDS:
                if not isinstance(v, bool):
                    return f"{k} must be a boolean"
                out[k] = int(v)
            elif k in _INT_FIELDS:
                if not isinstance(v, int) or isinstance(v, bool):
                    return f"{k} must be an integer"
                out[k] = v
            elif k in _STR_FIELDS:
                if v is not None and not isinstance(v, str):
                    return f"{k} must be a string"
                out[k] = v
            else:
                return f"unknown field {k}"
        if out.get("wait_agent_answer_timeout", 3) < 3:
            return "wait_agent_answer_timeout must be at least 3"
        if out.get("schedule", 1) not in (1, 2) or out.get("cond_routing", 1) not in (1, 2):
            return "schedule and cond_routing must be 1 or 2"
        return out

    async def _json_body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _answer({"r": 1, "project": self.project, "message": "body is not JSON"})
        if not isinstance(body, dict):
            return _answer({"r": 1, "project": self.project, "message": "body must be an object"})
        return body

    # -- routes ----------------------------------------------------------------------------------
    async def _queue_root(self, request: Request) -> Response:
        if request.method == "GET":
            self.requests.append(("GET", request.url.path, dict(request.query_params)))
        if (err := self._auth(request)) is not None:
            return err
        if request.method == "GET":
            try:
                page = max(1, int(request.query_params.get("page", "1")))
                limit = max(1, int(request.query_params.get("limit", "50")))
            except ValueError:
                return _answer({"r": 1, "project": self.project,
                                "message": "page and limit must be integers"})
            queues = list(self.queues.values())
            pages = max(1, math.ceil(len(queues) / limit))
            chunk = queues[(page - 1) * limit: page * limit]
            return _answer({"r": 0, "message": "Load queue(s) success", "project": self.project,
                            "data": {"totalCount": str(len(queues)), "totalPages": pages, "currentPage": page,
                                     "limit": limit, "queues": chunk}})
        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        self.requests.append(("POST", request.url.path, body))
        fields = self._fields(body, creating=True)
        if isinstance(fields, str):
            return _answer({"r": 1, "project": self.project, "message": fields})
        qid = f"QU_{next(_ids):016d}"
        self.queues[qid] = {"id": qid, "account": 408, "project": self.project, **_DEFAULTS, **fields}
        return _answer({"r": 0, "project": self.project, "queueID": qid, "message": "Create queue success"})

    async def _queue_one(self, request: Request) -> Response:
        if (err := self._auth(request)) is not None:
            return err
        qid = request.path_params["id"]
        if request.method == "DELETE":
            self.requests.append(("DELETE", request.url.path, None))
            if self.queues.pop(qid, None) is None:
                return _answer({"r": 3, "project": self.project, "message": "Queue not found"})
            return _answer({"r": 0, "project": self.project, "message": "Delete queue success"})
        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        self.requests.append(("PUT", request.url.path, body))
        if qid not in self.queues:
            return _answer({"r": 3, "project": self.project, "message": "Queue not found"})
        fields = self._fields(body, creating=False)
        if isinstance(fields, str):
            return _answer({"r": 1, "project": self.project, "message": fields})
        self.queues[qid].update(fields)
        return _answer({"r": 0, "message": "Update queue success", "project": self.project})

    # -- Stringee calling our hook ------------------------------------------------------------------
    async def route_calls(self, calls: list[dict[str, str]], queue_id: str | None = None) -> dict[str, Any]:
        """POST the queue's get_list_agents_url as Stringee does; the checked answer."""
        if queue_id is None:
            queue_id = next(q for q, v in self.queues.items() if v.get("get_list_agents_url"))
        url = self.queues[queue_id]["get_list_agents_url"]
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(url, json={"queueId": queue_id, "calls": calls, "projectId": self.project})
        if resp.status_code != 200:
            raise ShapeError(f"get_list_agents_url answered HTTP {resp.status_code}: {resp.text[:200]}")
        answer = resp.json()
        check_agents_answer(answer, [c["callId"] for c in calls])
        return dict(answer)


def check_agents_answer(answer: Any, call_ids: list[str]) -> None:
    """Raise ShapeError unless ``answer`` is the documented version-2 agents list."""
    if not isinstance(answer, dict) or answer.get("version") != 2:
        raise ShapeError("answer must be an object with version 2")
    calls = answer.get("calls")
    if not isinstance(calls, list) or [c.get("callId") for c in calls if isinstance(c, dict)] != call_ids:
        raise ShapeError("answer must list every callId of the request, in order")
    for c in calls:
        agents = c.get("agents")
        if not isinstance(agents, list):
            raise ShapeError(f"call {c.get('callId')}: agents must be a list")
        for a in agents:
            if not isinstance(a, dict) or not isinstance(a.get("stringee_user_id"), str):
                raise ShapeError(f"call {c.get('callId')}: every agent needs a stringee_user_id")
            if a.get("routing_type") not in (1, 2):
                raise ShapeError(f"call {c.get('callId')}: routing_type must be 1 or 2")
            if not isinstance(a.get("answer_timeout"), int) or isinstance(a.get("answer_timeout"), bool):
                raise ShapeError(f"call {c.get('callId')}: answer_timeout must be an integer")
            if "phone_number" in a and not isinstance(a["phone_number"], str):
                raise ShapeError(f"call {c.get('callId')}: phone_number must be a string")
            extra = set(a) - {"stringee_user_id", "phone_number", "routing_type", "answer_timeout"}
            if extra:
                raise ShapeError(f"call {c.get('callId')}: unexpected agent fields {sorted(extra)}")
