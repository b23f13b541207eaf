"""Provider hooks (plain Starlette, like the Ryng callbacks).

* ``GET|POST /hooks/ringme/agent-event/{token}`` — a ringme queue agent event: data in
  the query string (GET) or an ``application/x-www-form-urlencoded`` body (POST).
  ``agent_status=available`` makes the agent ready, ``logged_out`` not; a repeat changes
  nothing, nor does an event older than the agent's last one (``stale``). Statuses live in
  PostgreSQL, so the event may land on any instance behind a load balancer. 200
  ``{"status":"ok","result":"changed|repeat|stale|unmapped"}``; 400 for an event without
  ``agent_id`` or a known status; 503 while the database is unreachable.
* ``POST /hooks/stringee/agents/{token}`` — a Stringee queue's ``get_list_agents_url``:
  answers the agents of each call in the ``version: 2`` shape.

Tokens are HMAC-signed (``dialer.signing``, kinds ``ringme`` and ``stringee``): a forged
one is 401 and nothing is applied. ``dialer hooks urls`` prints both URLs for the
operator (they are never logged); ``dialer stringee sync-queue`` puts the Stringee one
into the queue itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import parse_qsl

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dialer.config import Settings
from dialer.http.connections import trust_body
from dialer.providers.ringme import BadEvent, RingmeReadiness, event_data
from dialer.providers.stringee import BadRequest, StringeeRouter
from dialer.signing import make_token, read_token

log = logging.getLogger(__name__)

MAX_HOOK_BYTES = 256 * 1024
RINGME_KIND, RINGME_IDENT = "ringme", "agents"
STRINGEE_KIND, STRINGEE_IDENT = "stringee", "queue"
RINGME_PATH = "/hooks/ringme/agent-event/"
STRINGEE_PATH = "/hooks/stringee/agents/"


def ringme_url(settings: Settings, secret: bytes) -> str:
    return settings.base_url + RINGME_PATH + make_token(secret, RINGME_KIND, RINGME_IDENT)


def stringee_url(settings: Settings, secret: bytes) -> str:
    return settings.base_url + STRINGEE_PATH + make_token(secret, STRINGEE_KIND, STRINGEE_IDENT)


def hook_urls(settings: Settings, secret: bytes) -> dict[str, str]:
    """What an operator configures at the providers (``dialer hooks urls``)."""
    return {"ringme_agent_event": ringme_url(settings, secret),
            "stringee_get_list_agents": stringee_url(settings, secret)}


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json(status, {"error": {"code": code, "message": message}})


async def _body(request: Request) -> bytes | None:
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_HOOK_BYTES:
            return None
    return body


def routes(
    secret: bytes,
    ringme: RingmeReadiness | None,
    stringee: StringeeRouter | None,
    count: Callable[[str, str], None] | None = None,
) -> list[Route]:
    """The hook routes; ``count(hook, result)`` is told every outcome (for a metric)."""

    def counted(hook: str, result: str) -> None:
        if count:
            count(hook, result)

    async def ringme_event(request: Request) -> Response:
        if read_token(secret, RINGME_KIND, request.path_params["token"]) != RINGME_IDENT:
            counted("ringme", "forged")
            return _error(401, "unauthorized", "invalid hook token")
        trust_body(request.scope)
        if ringme is None:
            return _error(503, "not_ready", "starting")
        pairs: dict[str, str] = dict(request.query_params)
        if request.method == "POST":
            body = await _body(request)
            if body is None:
                counted("ringme", "too_large")
                return _error(413, "too_large", "event body too large")
            text = body.decode("utf-8", "replace").strip()
            if text.startswith("{"):
                try:
                    loaded = orjson.loads(text)
                except orjson.JSONDecodeError:
                    loaded = {}
                if isinstance(loaded, dict):
                    pairs.update({k: str(v) for k, v in loaded.items() if v is not None})
            else:
                pairs.update(dict(parse_qsl(text, keep_blank_values=True)))
        elif "agent_id" not in pairs:
            # the page also speaks of the data "in the request header" for GET
            pairs.update({k: v for k, v in request.headers.items() if k in ("agent_id", "agent_status",
                          "agent_type", "agent_number", "extension_name", "event_source")})
        try:
            applied = await ringme.apply(event_data(pairs))
        except BadEvent as e:
            counted("ringme", "bad_event")
            return _error(400, "invalid", str(e))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # not 200: ringme (or whoever relays its events) may deliver it again
            counted("ringme", "unavailable")
            log.error("ringme agent event: database unavailable", extra={"error": str(e)})
            return _error(503, "unavailable", "try again")
        counted("ringme", applied.result)
        return _json(200, {"status": "ok", "result": applied.result})

    async def stringee_agents(request: Request) -> Response:
        if read_token(secret, STRINGEE_KIND, request.path_params["token"]) != STRINGEE_IDENT:
            counted("stringee", "forged")
            return _error(401, "unauthorized", "invalid hook token")
        trust_body(request.scope)
        if stringee is None:
            return _error(503, "not_ready", "starting")
        if request.method == "GET":  # one call in the query (the PUT page speaks of a GET request)
            q = request.query_params
            call = {"callId": q.get("callId"), "from": q.get("from"), "to": q.get("to")}
            payload: object = {"queueId": q.get("queueId"), "calls": [call]}
        else:
            body = await _body(request)
            if body is None:
                counted("stringee", "too_large")
                return _error(413, "too_large", "request body too large")
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                counted("stringee", "bad_request")
                return _error(400, "invalid", "body is not JSON")
        try:
            answer = await stringee.answer(payload)
        except BadRequest as e:
            counted("stringee", "bad_request")
            return _error(400, "invalid", str(e))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            counted("stringee", "unavailable")
            log.error("Stringee agents hook: database unavailable", extra={"error": str(e)})
            return _error(503, "unavailable", "try again")
        counted("stringee", "ok")
        return _json(200, answer)

    return [
        Route(RINGME_PATH + "{token}", ringme_event, methods=["GET", "POST"]),
        Route(STRINGEE_PATH + "{token}", stringee_agents, methods=["GET", "POST"]),
    ]
