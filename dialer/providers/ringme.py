"""ringme queue agents: readiness from agent-login / agent-logout events.

ringme calls a URL configured per agent (``POST /client/{client_id}/agent/local/{agent_id}/event/``
with ``{"url", "method", "event_type"}``) whenever the agent's queue status *changes*:
``GET`` with the data in the query string, or ``POST`` with an
``application/x-www-form-urlencoded`` body. The data (AgentEventData):

``agent_id``, ``agent_status`` (``available`` | ``logged_out``), ``agent_type``
(``local`` | ``remote``), ``extension_name`` (local agents), ``agent_number`` (remote
agents), ``event_source`` (``api`` | ``phone``).

``[ringme.agents]`` maps an agent (by ``agent_id``, ``extension_name`` — with or without
its ``@domain`` — or ``agent_number``) to our username; with no mapping the ``agent_id``
is the username. A target's ready agents are its ``agents`` that are ``available``
(every available agent when the target lists none). An agent we never heard of is not
ready: events only come on changes, so the last known status of each agent is kept in
``$STATE_DIR/ringme_agents.json`` across restarts.

Optionally ``GET /extension/{extension_id}/queue/status/`` is polled for the queue
counters (``answered_members``, ``trying_members``, ``waiting_members``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from dialer.clock import Clock
from dialer.config import Settings

log = logging.getLogger(__name__)

AVAILABLE = "available"
LOGGED_OUT = "logged_out"
_EVENT_STATUS = {"agent-login": AVAILABLE, "agent-logout": LOGGED_OUT}
FIELDS = ("agent_id", "agent_status", "agent_type", "agent_number", "extension_name", "event_source",
          "event_type")

RequestObserver = Callable[[str, str, int | None, float], None]


class RingmeError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BadEvent(ValueError):
    pass


class RingmeClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        self.on_request = on_request
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {token}", "accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def queue_status(self, extension_id: str) -> dict[str, int]:
        start = time.perf_counter()
        status: int | None = None
        try:
            resp = await self._client.get(f"/extension/{extension_id}/queue/status/")
            status = resp.status_code
        except httpx.HTTPError as e:
            raise RingmeError(f"ringme queue_status: {type(e).__name__}: {e}") from None
        finally:
            if self.on_request:
                self.on_request("ringme", "queue_status", status, time.perf_counter() - start)
        if status in (401, 403):
            raise RingmeError(f"ringme refused the token (HTTP {status})", status)
        if not 200 <= resp.status_code < 300:
            raise RingmeError(f"ringme queue_status: HTTP {status}: {resp.text[:300]}", status)
        try:
            body = resp.json()
        except ValueError:
            raise RingmeError("ringme queue_status: answer is not JSON", status) from None
        if not isinstance(body, dict):
            raise RingmeError("ringme queue_status: answer is not an object", status)
        return {k: int(body.get(k) or 0)
                for k in ("answered_members", "trying_members", "waiting_members")}


@dataclass(slots=True)
class Applied:
    result: str  # changed | repeat | unmapped
    username: str | None
    status: str


@dataclass(slots=True)
class _Agent:
    status: str
    at: datetime
    raw_id: str


class RingmeReadiness:
    """Agent statuses from ringme events (and optional queue counters from a poll)."""

    name = "ringme"

    def __init__(self, settings: Settings, clock: Clock, client: RingmeClient | None = None,
                 state_path: Path | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.client = client
        self.state_path = state_path
        self._agents: dict[str, _Agent] = {}
        self._event_heard: float | None = None
        self._poll_heard: dict[str, float] = {}
        self._counters: dict[str, dict[str, int]] = {}
        self._poll_failing: dict[str, str] = {}
        self.events = 0
        self._load()

    # -- persistence ---------------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = orjson.loads(self.state_path.read_bytes())
            newest: datetime | None = None
            for user, a in data.get("agents", {}).items():
                at = datetime.fromisoformat(a["at"])
                self._agents[user] = _Agent(str(a["status"]), at, str(a.get("raw_id", "")))
                newest = at if newest is None or at > newest else newest
            if newest is not None:
                age = max(0.0, (self.clock.now() - newest).total_seconds())
                self._event_heard = self.clock.monotonic() - age
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ringme agent state file unreadable; starting empty",
                        extra={"path": str(self.state_path), "error": str(e)})
            self._agents.clear()

    def _save(self) -> None:
        if self.state_path is None:
            return
        data = {"agents": {u: {"status": a.status, "at": a.at.isoformat(), "raw_id": a.raw_id}
                           for u, a in self._agents.items()}}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(data))
            os.replace(tmp, self.state_path)
        except OSError as e:
            log.warning("ringme agent state not saved", extra={"error": str(e)})

    # -- events -------------------------------------------------------------------------------
    def username(self, data: Mapping[str, str]) -> str | None:
        """Our username for the agent of an event; None when a mapping exists and lacks it."""
        mapping = self.settings.ringme.agents
        agent_id = data.get("agent_id", "")
        if not mapping:
            return agent_id or None
        ext = data.get("extension_name", "")
        for key in (agent_id, ext, ext.split("@", 1)[0], data.get("agent_number", "")):
            if key and key in mapping:
                return mapping[key]
        return None

    def apply(self, data: Mapping[str, str]) -> Applied:
        """One agent event. Repeats (same status again) change nothing."""
        agent_id = (data.get("agent_id") or "").strip()
        status = (data.get("agent_status") or "").strip().lower()
        if not status:
            status = _EVENT_STATUS.get((data.get("event_type") or "").strip().lower(), "")
        if not agent_id:
            raise BadEvent("agent_id is missing")
        if status not in (AVAILABLE, LOGGED_OUT):
            raise BadEvent(f"agent_status must be '{AVAILABLE}' or '{LOGGED_OUT}'")
        self.events += 1
        self._event_heard = self.clock.monotonic()
        user = self.username(data)
        if user is None:
            log.warning("ringme event for an agent not in [ringme.agents]; ignored",
                        extra={"agent_id": agent_id, "agent_status": status})
            return Applied("unmapped", None, status)
        known = self._agents.get(user)
        if known is not None and known.status == status:
            return Applied("repeat", user, status)
        self._agents[user] = _Agent(status, self.clock.now(), agent_id)
        if not any(user in t.agents for t in self.settings.targets.values()):
            log.warning("ringme agent is in no target's agents list (map it in [ringme.agents])",
                        extra={"agent": user})
        log.info("ringme agent status", extra={"agent": user, "agent_status": status,
                                                "source": data.get("event_source")})
        self._save()
        return Applied("changed", user, status)

    # -- what the selector and metrics read -------------------------------------------------
    def available(self) -> set[str]:
        return {u for u, a in self._agents.items() if a.status == AVAILABLE}

    def ready(self, target: str) -> set[str] | None:
        if self._event_heard is None and not self._agents:
            return None
        t = self.settings.targets.get(target)
        agents = t.agents if t is not None else []
        avail = self.available()
        return avail & set(agents) if agents else avail

    def last_heard(self, target: str) -> float | None:
        heard = [h for h in (self._event_heard, self._poll_heard.get(target)) if h is not None]
        return max(heard) if heard else None

    def counters(self, target: str) -> dict[str, int] | None:
        c = self._counters.get(target)
        return dict(c) if c is not None else None

    def depth(self, target: str) -> int | None:
        c = self._counters.get(target)
        return c["waiting_members"] if c is not None else None

    def silence_default(self, target: str) -> float | None:
        """Events only come on changes: silence means something only while a poll runs."""
        r = self.settings.ringme
        if self.client is not None and target in r.queues:
            return max(60.0, 4 * r.poll_s)
        return None

    # -- optional counters poll -------------------------------------------------------------------
    async def poll_once(self) -> dict[str, bool]:
        outcome: dict[str, bool] = {}
        if self.client is None:
            return outcome
        for target, ext in self.settings.ringme.queues.items():
            try:
                self._counters[target] = await self.client.queue_status(ext)
            except RingmeError as e:
                if self._poll_failing.get(target) != e.message:
                    log.error("ringme queue status poll failed", extra={"target": target, "error": e.message})
                self._poll_failing[target] = e.message
                outcome[target] = False
                continue
            if self._poll_failing.pop(target, None) is not None:
                log.info("ringme queue status poll works again", extra={"target": target})
            self._poll_heard[target] = self.clock.monotonic()
            outcome[target] = True
        return outcome


def event_data(pairs: Mapping[str, Any]) -> dict[str, str]:
    """The AgentEventData fields of a query string, form body or header set."""
    return {k: str(pairs[k]) for k in FIELDS if k in pairs and pairs[k] is not None}
