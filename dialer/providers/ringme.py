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
PostgreSQL (``agent_state``): across restarts, and for every instance behind a load
balancer whichever one the event reached. An event is applied only when it is newer than
the one the table holds (its ``event_time`` when it carries one — ringme sends none, a
relay may — else when it reached us), so a late event never overrides a newer one.

Optionally ``GET /extension/{extension_id}/queue/status/`` is polled for the queue
counters (``answered_members``, ``trying_members``, ``waiting_members``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import orjson

from dialer.clock import Clock
from dialer.config import Settings
from dialer.providers import agent_state
from dialer.providers.agent_state import SourceView

log = logging.getLogger(__name__)

AVAILABLE = "available"
LOGGED_OUT = "logged_out"
_EVENT_STATUS = {"agent-login": AVAILABLE, "agent-logout": LOGGED_OUT}
FIELDS = ("agent_id", "agent_status", "agent_type", "agent_number", "extension_name", "event_source",
          "event_type", "event_time")

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
    result: str  # changed | repeat | stale | unmapped
    username: str | None
    status: str


class RingmeReadiness:
    """Agent statuses from ringme events (and optional queue counters from a poll), kept in
    PostgreSQL (``agent_state``) so that every instance paces on them."""

    name = "ringme"

    def __init__(self, settings: Settings, clock: Clock, pool: asyncpg.Pool,
                 client: RingmeClient | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.pool = pool
        self.client = client
        self._poll_failing: dict[str, str] = {}
        self.events = 0  # events this instance received (all instances: the table)

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

    async def apply(self, data: Mapping[str, str]) -> Applied:
        """One agent event, into the shared table. A repeat (same status again) changes
        nothing; an event older than the one the table holds (``stale``) is not applied."""
        agent_id = (data.get("agent_id") or "").strip()
        status = (data.get("agent_status") or "").strip().lower()
        if not status:
            status = _EVENT_STATUS.get((data.get("event_type") or "").strip().lower(), "")
        if not agent_id:
            raise BadEvent("agent_id is missing")
        if status not in (AVAILABLE, LOGGED_OUT):
            raise BadEvent(f"agent_status must be '{AVAILABLE}' or '{LOGGED_OUT}'")
        now = self.clock.now()
        at = event_time(data.get("event_time"), now)
        self.events += 1
        user = self.username(data)
        if user is None:
            async with self.pool.acquire() as conn:
                await agent_state.heard(conn, self.name, now)
            log.warning("ringme event for an agent not in [ringme.agents]; ignored",
                        extra={"agent_id": agent_id, "agent_status": status})
            return Applied("unmapped", None, status)
        async with self.pool.acquire() as conn:
            result = await agent_state.apply_event(conn, self.name, user, status, agent_id, at, now)
        if result == agent_state.STALE:
            log.info("ringme event older than the agent's last one; not applied",
                     extra={"agent": user, "agent_status": status, "event_time": at.isoformat()})
        if result != agent_state.CHANGED:
            return Applied(result, user, status)
        if not any(user in t.agents for t in self.settings.targets.values()):
            log.warning("ringme agent is in no target's agents list (map it in [ringme.agents])",
                        extra={"agent": user})
        log.info("ringme agent status", extra={"agent": user, "agent_status": status,
                                                "source": data.get("event_source")})
        return Applied(agent_state.CHANGED, user, status)

    async def import_file(self, path: Path) -> int:
        """Statuses kept by an older version in ``$STATE_DIR/ringme_agents.json``: applied with
        their own times (anything newer in the table wins), then the file is renamed
        ``.imported``. Returns how many agents it held."""
        rows = await anyio.to_thread.run_sync(_read_state_file, path)
        if rows is None:
            return 0
        async with self.pool.acquire() as conn:
            for user, status, raw_id, at in rows:
                await agent_state.apply_event(conn, self.name, user, status, raw_id, at, self.clock.now())
        await anyio.to_thread.run_sync(path.rename, path.with_name(path.name + ".imported"))
        log.info("ringme agent statuses imported from the state file", extra={"agents": len(rows)})
        return len(rows)

    # -- what the selector reads ----------------------------------------------------------------
    async def view(self, conn: asyncpg.Connection, target: str) -> SourceView:
        """A target's ready agents (its ``agents`` that are available; every available agent
        when it lists none), when ringme last spoke, and the queue counters."""
        s = await agent_state.read(conn, self.name, target, AVAILABLE)
        heard = [h for h in (s.heard_at, s.source_heard_at) if h is not None]
        ready: set[str] | None = None
        if s.known or s.source_heard_at is not None:
            t = self.settings.targets.get(target)
            agents = t.agents if t is not None else []
            ready = s.available & set(agents) if agents else set(s.available)
        return SourceView(ready, max(heard) if heard else None,
                          s.counters["waiting_members"] if s.counters else None, s.counters)

    def silence_default(self, target: str) -> float | None:
        """Events only come on changes: silence means something only while a poll runs."""
        r = self.settings.ringme
        if self.client is not None and target in r.queues:
            return max(60.0, 4 * r.poll_s)
        return None

    # -- optional counters poll -------------------------------------------------------------------
    async def poll_once(self, conn: asyncpg.Connection | None = None) -> dict[str, bool]:
        """Poll every mapped queue's counters once and save them for every instance (on
        ``conn``: the poll's turn, when given). Returns target -> whether its poll worked."""
        if conn is None:
            async with self.pool.acquire() as c:
                return await self.poll_once(c)
        outcome: dict[str, bool] = {}
        if self.client is None:
            return outcome
        for target, ext in self.settings.ringme.queues.items():
            try:
                counters = await self.client.queue_status(ext)
            except RingmeError as e:
                if self._poll_failing.get(target) != e.message:
                    log.error("ringme queue status poll failed", extra={"target": target, "error": e.message})
                self._poll_failing[target] = e.message
                outcome[target] = False
                continue
            if self._poll_failing.pop(target, None) is not None:
                log.info("ringme queue status poll works again", extra={"target": target})
            await agent_state.save_poll(conn, self.name, target, self.clock.now(),
                                        depth=counters["waiting_members"], counters=counters)
            outcome[target] = True
        return outcome


def _read_state_file(path: Path) -> list[tuple[str, str, str, datetime]] | None:
    """(user, status, raw id, time) of each agent in an older version's state file."""
    if not path.exists():
        return None
    try:
        agents = orjson.loads(path.read_bytes()).get("agents", {})
        return [(str(u), str(a["status"]), str(a.get("raw_id", "")), datetime.fromisoformat(a["at"]))
                for u, a in agents.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ringme agent state file unreadable; not imported",
                    extra={"path": str(path), "error": str(e)})
        return None


def event_time(value: str | None, now: datetime) -> datetime:
    """An event's own time when it carries one (``event_time``: ISO 8601 or Unix seconds;
    ringme itself sends none), else ``now``. Never later than ``now``: an event stamped in
    the future would otherwise outrank every real one after it."""
    if not value:
        return now
    try:
        at = datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        try:
            at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadEvent("event_time must be ISO 8601 or Unix seconds") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    except (OverflowError, OSError):
        raise BadEvent("event_time is out of range") from None
    return min(at, now)


def event_data(pairs: Mapping[str, Any]) -> dict[str, str]:
    """The AgentEventData fields of a query string, form body or header set."""
    return {k: str(pairs[k]) for k in FIELDS if k in pairs and pairs[k] is not None}
