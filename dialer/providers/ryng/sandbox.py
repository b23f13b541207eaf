"""Ryng sandbox: a local simulator of the Ryng REST API that dials fake customers.

``make run`` serves it when no real Ryng URL is configured, and the test suite uses
it as the fake Ryng. It follows the vendor pages (``shared/reference/ryng-queue-
append.txt`` and ``ryng-campaign.txt``), including their quirks and failure modes.

Endpoints (relative: the app works mounted under any prefix)
------------------------------------------------------------
``POST /rest-api/v1/progressive/queue/{queueID}/calls`` — JSON only
    ``agentMapping`` (global | inline | all-agents, default all-agents), ``agents``
    (array of usernames; required for global), ``legDirection`` (agent-first |
    customer-first, default from the queue = ``default_leg_direction``),
    ``maxRetries`` (whole number >= 0), ``retryInterval`` (minutes >= 0),
    ``maxDispose`` (seconds >= 0), ``customerData`` {``jsonData`` [call objects],
    ``campaignID`` (copy the rows of a campaign made here), ``connectCallbackUrl``,
    ``terminalCallbackUrl`` (absolute http/https)}. A call object: ``number``
    (required string, ``+`` and 4-16 digits), ``priority`` (number, bigger first),
    ``agentsAssigned`` (array of usernames; required on every row for inline),
    ``customField{N}`` (strings, N >= 1).
``POST /rest-api/v1/campaign`` — JSON or form-data
    JSON: the same parameters (the queue-only ``campaignID`` aside) plus ``name``
    and ``customFieldNames`` {``customField{N}Name``: header}. ``legDirection``,
    ``maxRetries``, ``retryInterval`` and ``maxDispose`` are not on the campaign page;
    the sandbox accepts and honours them as on the queue page.
    Form-data: ``campaign-sheet`` (CSV file, UTF-8, comma separated; header
    ``number`` plus optional ``priority``, ``agentsAssigned``, ``customField{N}``,
    and any other header, which takes the lowest free ``customField{N}`` slot with
    its header as the ``customField{N}Name``), ``agents`` (or ``agent``, as in the
    page's case study: usernames or agent ids, ``,``/``;``/``|`` separated, or
    ``in-file`` to read each row's ``agentsAssigned``; absent = all agents),
    ``campaign-name``. Sandbox extension (not on the page, real Ryng unknown):
    text fields ``connectCallbackUrl``, ``terminalCallbackUrl``, ``legDirection``,
    ``maxRetries``, ``retryInterval``, ``maxDispose``, ``customFieldNames`` (JSON).
    Agent ids are 10, 20, 30... in account order (the case study's numbering).

Where the pages are silent the sandbox is strict so mistakes surface: unknown
parameters and row fields are refused, ``null`` counts as absent.

Answers
-------
* 401 ``{"status": "error", "message": "invalid or missing x-access-token"}``.
* 400 (404 for an unknown queue when ``queues`` is configured, 415 for a wrong
  content type) ``{"status": "error", "message": "customerData.jsonData[3].number is
  required"}`` — the message names the parameter, row and value at fault.
* 200 (the response shape is not on the pages; this is the sandbox's choice)::

    {"status": "success", "message": "3 calls added to queue 42",
     "data": {"queueId": "42", "callsAdded": 3,
              "calls": [{"callId": "a1b2c3-0000001", "number": "+14155550100"}, ...]}}

  For a campaign ``data`` is ``{"campaignId": 1764145200, "name": "...",
  "callsAdded": n, "calls": [...]}`` (campaign ids are whole numbers).

Dialing
-------
Each call is given to one agent when accepted: round-robin over the request's
eligible agents in row order (``global``: ``agents`` in the order given; ``inline``:
the row's ``agentsAssigned``; ``all-agents``: the account's agents), starting afresh
with every request. So a single-lead campaign (or append) with no agent named
always lands on the account's FIRST agent — the campaign page's case study.
An agent takes one call at a time, biggest priority first, then oldest, and after
every attempt stays in wrap-up for the request's ``maxDispose``. Each attempt draws
ANSWERED / NO_ANSWER / BUSY / UNREACHABLE from the configured rates; the last three
are retried up to ``maxRetries`` times, ``retryInterval`` minutes later.

Callbacks (JSON POSTs; only a 200 answer counts as delivered)
-------------------------------------------------------------
Connect URL of a queue append, at every assignment of a call to an agent (each attempt;
``customer-first``: once the customer answered, so an unanswered or abandoned call has
none)::

    {"event": "agent_assigned", "callId", "number", "agent", "attempts", "priority",
     "queueId" | "campaignId" (+ "campaignName"), "timestamp", "customField1", ...}

Campaigns send the campaign page's three milestones instead: ``agent_answered`` and
``customer_answered`` (same fields), and, as "call termination", a copy of the
``terminated`` body below (``campaign_connect_termination``). Terminal URL, once
per call when it ends::

    {"event": "terminated", ...the fields above..., "disposition": "ANSWERED" |
     "NO_ANSWER" | "BUSY" | "UNREACHABLE", "startTime", "endTime", "talkTime",
     "recordingUrl" (answered only)}

Every ``customField{N}`` of the row is copied verbatim. Times are ISO 8601 UTC
(``2026-01-05T10:00:00.123456Z``, real wall-clock instants of the last attempt);
``talkTime`` is the simulated talk duration in whole vendor seconds, unscaled, so
with ``time_scale`` < 1 it exceeds ``endTime - startTime``. A call's callbacks go
out in order (each waits for the previous one's first try). Terminal deliveries are
retried twice, connect deliveries once, at 1-minute intervals (scaled), then given up;
``stats()`` counts them (``sent``, ``delivered``, ``failed``, ``retried``, ``given_up``)
and how many are between a failure and their end (``retrying``).

Faults (``SandboxConfig``, also settable at run time) and admin
---------------------------------------------------------------
``latency_s`` (before taking a request), ``answer_delay_s`` (after taking it, before
answering: a sender killed meanwhile leaves calls the provider has), ``timeout_rate``
(hang ``timeout_hang_s``, then 504 or a dropped connection; nothing is queued),
``throttle_rate`` (429 + ``Retry-After``),
``error_rate`` (500 JSON, 502 HTML or 503 text + ``Retry-After``, drawn from
``error_statuses``; nothing queued),
``accept_then_fail_rate`` (calls ARE queued, then — ``accept_then_fail_mode``
mixed | 5xx | drop — a 5xx drawn from ``accept_then_fail_statuses`` (default 500,
502, 504 — never 503, which says "not taken"; 504 is a gateway timeout page) or a
connection dropped mid-response: the
"outcome unknown" case), ``duplicate_callback_rate``, ``late_callback_rate`` (a terminal
callback held back 5 minutes, scaled). Faults are drawn before the token check, as
a gateway would. A dropped connection sends the status line, headers and a third of
the body, then the server closes it (uvicorn logs "ASGI callable returned without
completing response"); the client sees e.g. ``httpx.RemoteProtocolError``.
Admin (no token): ``GET _sandbox/stats``, ``GET|POST _sandbox/config`` (a JSON
object of run-time fields), ``GET _sandbox/calls`` (``?state=``, ``?limit=``),
``GET _sandbox/requests`` (every API request: arrival time, endpoint, status, calls
queued; the last ``keep_requests``). ``abandon_rate`` (customer-first only): the share of
answered calls no agent takes in time, ended with disposition ``ABANDONED``.
``GET _sandbox/timeline`` (``?since=`` seconds): ``{"now": s, "events": [[s, event,
agent, detail], ...]}`` on the sandbox's monotonic clock — ``offered`` (a call assigned
to an agent), ``ended`` (its attempt ended), ``ready`` (the agent's maxDispose ran out:
it can be offered the next call), ``request`` (``detail``: ``queue:<rows>``),
``terminal`` (a terminal callback answered 200). See ``sandbox_engine``.

Restarts
--------
As a real Ryng dials on while its customer restarts, ``stop()`` keeps the calls under
way (attempts with their drawn outcome and planned end, waiting calls, wrap-ups,
undelivered callbacks with their tries left) and the next ``start()`` carries on with
them; with ``state_file`` they survive the process too (also a kill: the file is kept
up to date while running). See ``sandbox_engine``.

Python: ``RyngSandbox(config).app`` (Starlette; mount it anywhere, it has no
lifespan), ``await start()`` / ``await stop()`` (agents and callback sender on the
running loop), ``stats()``, ``calls()``, ``configure(**changes)``,
``dials_by_number()``, ``submissions_by_ref("customField10")``; ``serve()`` runs
it alone under uvicorn. Call ids are ``<6 hex, random per instance>-<seq>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, fields
from random import Random
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dialer.providers.ryng.sandbox_config import SandboxConfig
from dialer.providers.ryng.sandbox_engine import Engine
from dialer.providers.ryng.sandbox_requests import (
    LEG_DIRECTIONS,
    Defaults,
    RequestError,
    Submission,
    parse_form,
    parse_json,
)

__all__ = ["RyngSandbox", "SandboxConfig", "serve"]


_RATES = ("abandon_rate", "error_rate", "throttle_rate", "timeout_rate", "accept_then_fail_rate",
          "duplicate_callback_rate", "late_callback_rate", "callback_rate")
_NON_NEGATIVE = ("answer_rate", "no_answer_rate", "busy_rate", "unreachable_rate",  # weights, normalised
                 "agent_pickup_s", "default_max_dispose_s", "default_retry_interval_min", "timeout_hang_s",
                 "latency_s", "answer_delay_s")
_POSITIVE = ("time_scale", "callback_timeout_s", "callback_after_s")
_SERVER_ERRORS = (500, 502, 503, 504)
_RUNTIME = frozenset((*_RATES, *_NON_NEGATIVE, *_POSITIVE, "ring_s", "talk_s", "default_leg_direction",
                      "default_max_retries", "retry_after_s", "accept_then_fail_mode",
                      "accept_then_fail_statuses", "error_statuses", "campaign_connect_termination",
                      "keep_ended_calls"))


def _check(name: str, value: Any) -> Any:
    """Validate one config value; returns it normalised or raises ValueError naming it."""
    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must be a number")
        return float(v)

    if name in _RATES:
        v = number(value)
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
        return v
    if name in _NON_NEGATIVE or name in _POSITIVE:
        v = number(value)
        if v < 0 or (name in _POSITIVE and v == 0):
            raise ValueError(f"{name} must be {'> 0' if name in _POSITIVE else '>= 0'}")
        return v
    if name in ("ring_s", "talk_s"):
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"{name} must be a pair [low, high]")
        lo, hi = number(value[0]), number(value[1])
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} must satisfy 0 <= low <= high")
        return (lo, hi)
    if name in ("default_max_retries", "retry_after_s", "keep_ended_calls"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0")
        return value
    if name == "default_leg_direction":
        if value not in LEG_DIRECTIONS:
            raise ValueError(f"{name} must be one of {', '.join(LEG_DIRECTIONS)}")
        return value
    if name == "accept_then_fail_mode":
        if value not in ("mixed", "5xx", "drop"):
            raise ValueError(f"{name} must be one of mixed, 5xx, drop")
        return value
    if name in ("accept_then_fail_statuses", "error_statuses"):
        if (not isinstance(value, list | tuple) or not value
                or not all(v in _SERVER_ERRORS for v in value)):
            raise ValueError(f"{name} must be a non-empty list of {', '.join(map(str, _SERVER_ERRORS))}")
        return tuple(value)
    if name == "campaign_connect_termination":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    raise ValueError(f"{name} cannot be changed at run time")


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json",
                    headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"status": "error", "message": message}, headers)


class _DroppedResponse(Response):
    """Sends the status line, headers and part of the body, then abandons the
    response: the server closes the connection, the client sees it drop mid-answer."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body, status_code=status, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        part = self.body[: len(self.body) // 3]
        await send({"type": "http.response.body", "body": part, "more_body": True})


class RyngSandbox:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        cfg = self.config
        if not cfg.agents or len(set(cfg.agents)) != len(cfg.agents):
            raise ValueError("agents must be a non-empty list of distinct usernames")
        for f in fields(cfg):
            if f.name in _RUNTIME:
                setattr(cfg, f.name, _check(f.name, getattr(cfg, f.name)))
        # two streams, so the API's fault draws do not depend on how dialing interleaves
        self._rng = Random(cfg.seed)  # noqa: S311 - simulation, not security
        self._engine = Engine(cfg, Random(None if cfg.seed is None else cfg.seed + 1))  # noqa: S311
        self._stopped = asyncio.Event()
        self._requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._faults: Counter[str] = Counter()
        self._log: deque[dict[str, Any]] = deque()  # API requests: arrival (unix s), status, calls queued
        queue_path = "/rest-api/v1/progressive/queue/{queue_id}/calls"
        self.app = Starlette(
            routes=[
                Route(queue_path, self._queue_append, methods=["POST"]),
                Route("/rest-api/v1/campaign", self._campaign, methods=["POST"]),
                Route("/_sandbox/stats", self._admin_stats, methods=["GET"]),
                Route("/_sandbox/config", self._admin_config, methods=["GET", "POST"]),
                Route("/_sandbox/calls", self._admin_calls, methods=["GET"]),
                Route("/_sandbox/requests", self._admin_requests, methods=["GET"]),
                Route("/_sandbox/timeline", self._admin_timeline, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    # ------------------------------------------------------------------ public
    async def start(self) -> None:
        """Start the agents and the callback sender on the running event loop."""
        self._stopped = asyncio.Event()
        await self._engine.start()

    async def stop(self) -> None:
        """Stop the workers, release hanging requests, close the HTTP client. Idempotent."""
        self._stopped.set()
        await self._engine.stop()

    def configure(self, **changes: Any) -> None:
        """Change run-time settings (rates, faults, durations); ValueError names a bad one."""
        checked = {}
        for name, value in changes.items():
            if name not in _RUNTIME:
                raise ValueError(f"{name} cannot be changed at run time")
            checked[name] = _check(name, value)
        for name, value in checked.items():
            setattr(self.config, name, value)

    def stats(self) -> dict[str, Any]:
        out = {"requests": {k: dict(v) for k, v in self._requests.items()}, "faults": dict(self._faults)}
        out.update(self._engine.stats())
        out["config"] = self._public_config()
        return out

    def calls(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        items = [c for c in self._engine.calls.values() if state is None or c.state == state]
        return [c.as_dict() for c in items[:limit]]

    def requests(self) -> list[dict[str, Any]]:
        """Every API request in arrival order: ``at`` (unix seconds when it arrived),
        ``endpoint``, ``status`` and ``calls`` (how many it queued)."""
        return list(self._log)
    def timeline(self, since: float = 0.0) -> list[tuple[float, str, str, str]]:
        """Events at or after ``since`` (monotonic seconds): see ``sandbox_engine``."""
        return [e for e in self._engine.timeline if e[0] >= since]

    def dials_by_number(self) -> dict[str, int]:
        return dict(self._engine.dials)

    def submissions_by_ref(self, field: str) -> dict[str, int]:
        return dict(self._engine.refs.get(field, {}))

    # ------------------------------------------------------------------ API
    async def _queue_append(self, request: Request) -> Response:
        queue_id = str(request.path_params["queue_id"])

        async def work() -> dict[str, Any]:
            if self.config.queues is not None and queue_id not in self.config.queues:
                raise RequestError(f"queue {queue_id!r} not found", 404)
            ctype = request.headers.get("content-type", "")
            if "json" not in ctype:
                raise RequestError(f"Content-Type must be application/json (got {ctype or 'none'!r})", 415)
            sub = parse_json(await self._json_body(request), "queue", self.config.agents, self._defaults(),
                             self._engine.campaign_rows)
            sub.queue_id = queue_id
            return self._accept(sub, f"queue {queue_id}")

        return await self._api(request, "queue_append", work)

    async def _campaign(self, request: Request) -> Response:
        async def work() -> dict[str, Any]:
            ctype = request.headers.get("content-type", "")
            if "json" in ctype:
                sub = parse_json(await self._json_body(request), "campaign", self.config.agents,
                                 self._defaults())
            elif ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                text, sheet = await self._form_body(request)
                sub = parse_form(text, sheet, self.config.agents, self._engine.agent_ids, self._defaults())
            else:
                raise RequestError("Content-Type must be application/json or multipart/form-data "
                                   f"(got {ctype or 'none'!r})", 415)
            sub.campaign_id = self._engine.new_campaign_id()
            sub.name = sub.name or f"campaign::{sub.campaign_id}"
            return self._accept(sub, f"campaign {sub.campaign_id}")

        return await self._api(request, "campaign_create", work)

    def _defaults(self) -> Defaults:
        c = self.config
        return Defaults(c.default_leg_direction, c.default_max_dispose_s, c.default_max_retries,
                        c.default_retry_interval_min, c.max_calls_per_request)

    def _accept(self, sub: Submission, where: str) -> dict[str, Any]:
        calls = self._engine.submit(sub)
        data: dict[str, Any] = {sub.target_key: sub.target_id}
        if sub.kind == "campaign":
            data["name"] = sub.name
        data["callsAdded"] = len(calls)
        data["calls"] = [{"callId": c.call_id, "number": c.number} for c in calls]
        message = f"{len(calls)} call{'' if len(calls) == 1 else 's'} added to {where}"
        return {"status": "success", "message": message, "data": data}

    @staticmethod
    async def _json_body(request: Request) -> Any:
        raw = await request.body()
        if not raw.strip():
            raise RequestError("request body is empty (expected a JSON object)")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise RequestError(f"request body is not valid JSON: {e}") from None

    @staticmethod
    async def _form_body(request: Request) -> tuple[dict[str, str], bytes | None]:
        text: dict[str, str] = {}
        sheet: bytes | None = None
        try:
            async with request.form(max_files=4, max_fields=100) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        if key != "campaign-sheet":
                            raise RequestError(f"form field {key!r} must be text, not a file")
                        if sheet is not None:
                            raise RequestError("campaign-sheet given more than once")
                        sheet = await value.read()
                    elif key == "campaign-sheet":
                        raise RequestError("campaign-sheet must be a file upload (multipart/form-data)")
                    elif key in text and key in ("agents", "agent"):
                        text[key] = f"{text[key]},{value}"
                    elif key in text:
                        raise RequestError(f"form field {key!r} given more than once")
                    else:
                        text[key] = value
        except HTTPException as e:  # malformed multipart
            raise RequestError(f"malformed form-data body: {e.detail}") from None
        return text, sheet

    async def _api(self, request: Request, endpoint: str,
                   work: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
        arrived = time.time()
        added = 0

        async def counted() -> dict[str, Any]:
            nonlocal added
            out = await work()
            added = int(out["data"]["callsAdded"])
            return out

        resp = await self._api_answer(request, counted)
        status = "dropped" if isinstance(resp, _DroppedResponse) else str(resp.status_code)
        self._requests[endpoint][status] += 1
        self._log.append({"at": arrived, "endpoint": endpoint, "status": status, "calls": added})
        while len(self._log) > max(0, self.config.keep_requests):
            self._log.popleft()
        return resp

    async def _api_answer(self, request: Request, work: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
        cfg, rng = self.config, self._rng
        if cfg.latency_s > 0:
            self._faults["latency"] += 1
            await self._hold(cfg.latency_s)
        roll = rng.random()
        if roll < cfg.timeout_rate:
            self._faults["timeout"] += 1
            await self._hold(cfg.timeout_hang_s)
            if rng.random() < 0.5:
                return _error(504, "gateway timeout")
            return _DroppedResponse(504, b'{"status": "error", "message": "gateway timeout"}')
        roll -= cfg.timeout_rate
        if roll < cfg.throttle_rate:
            self._faults["throttle"] += 1
            return _error(429, "too many requests, slow down", {"Retry-After": str(int(cfg.retry_after_s))})
        roll -= cfg.throttle_rate
        if roll < cfg.error_rate:
            self._faults["error"] += 1
            return self._server_error(cfg.error_statuses)
        token = request.headers.get("x-access-token", "")
        if not secrets.compare_digest(token.encode(), cfg.token.encode()):
            return _error(401, "invalid or missing x-access-token")
        try:
            payload = await work()
        except RequestError as e:
            return _error(e.status, e.message)
        if cfg.answer_delay_s > 0:  # taken: a sender that dies now leaves calls we dial
            self._faults["answer_delay"] += 1
            await self._hold(cfg.answer_delay_s)
        if rng.random() < cfg.accept_then_fail_rate:
            self._faults["accept_then_fail"] += 1
            mode = cfg.accept_then_fail_mode
            if mode == "mixed":
                mode = rng.choice(("5xx", "drop"))
            if mode == "drop":
                return _DroppedResponse(200, orjson.dumps(payload))
            return self._server_error(cfg.accept_then_fail_statuses)
        return _json(200, payload)

    def _server_error(self, statuses: tuple[int, ...] = (500, 502, 503)) -> Response:
        kind = self._rng.choice(statuses)
        if kind == 500:
            return _error(500, "internal server error")
        if kind == 502:
            return Response("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
                            "Gateway</h1></center></body></html>\n", status_code=502, media_type="text/html")
        if kind == 504:
            return Response("<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 "
                            "Gateway Time-out</h1></center></body></html>\n", status_code=504,
                            media_type="text/html")
        return Response("Service Unavailable\n", status_code=503, media_type="text/plain",
                        headers={"Retry-After": str(int(self.config.retry_after_s))})

    async def _hold(self, seconds: float) -> None:
        """Wait ``seconds`` (unscaled), or less if the sandbox stops meanwhile."""
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except TimeoutError:
            pass

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "not found" if exc.status_code == 404 else str(exc.detail).lower()
        return _error(exc.status_code, message, dict(exc.headers or {}))

    # ------------------------------------------------------------------ admin
    def _public_config(self) -> dict[str, Any]:
        out = asdict(self.config)
        out.pop("token", None)
        return out

    async def _admin_stats(self, request: Request) -> Response:
        return _json(200, self.stats())

    async def _admin_config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body())
            except orjson.JSONDecodeError as e:
                return _error(400, f"request body is not valid JSON: {e}")
            if not isinstance(changes, dict):
                return _error(400, "request body must be a JSON object")
            try:
                self.configure(**changes)
            except ValueError as e:
                return _error(400, str(e))
        return _json(200, {"status": "success", "config": self._public_config()})

    async def _admin_requests(self, request: Request) -> Response:
        return _json(200, self.requests())
    async def _admin_timeline(self, request: Request) -> Response:
        try:
            since = float(request.query_params.get("since") or 0)
        except ValueError:
            return _error(400, "since must be a number of seconds")
        return _json(200, {"now": time.monotonic(), "events": self.timeline(since)})

    async def _admin_calls(self, request: Request) -> Response:
        limit_text = request.query_params.get("limit")
        try:
            limit = int(limit_text) if limit_text else None
        except ValueError:
            return _error(400, "limit must be a whole number")
        return _json(200, self.calls(request.query_params.get("state"), limit))


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own re-raises SIGTERM/SIGINT once it has served, which ends the process
        # before stop() has kept the calls under way; here the signal only stops serving
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


async def serve(config: SandboxConfig, host: str, port: int) -> None:
    """Run the sandbox alone with uvicorn until cancelled (or SIGINT/SIGTERM)."""
    sandbox = RyngSandbox(config)
    await sandbox.start()
    server = _Server(uvicorn.Config(sandbox.app, host=host, port=port, lifespan="off",
                                           timeout_graceful_shutdown=5, log_level="info"))
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await sandbox.stop()
        await task
        raise
    finally:
        await sandbox.stop()
