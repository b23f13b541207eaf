"""Progressive pacing: calls in flight never exceed ready agents x calls_per_agent.

An agent is busy while on a call and for ``max_dispose_s`` after it ends (wrap-up).
Who is ready comes from an agent source (agent events, status polls, else the target's
static agent list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg

from dialer.config import Target
from dialer.store.queries import Q


@dataclass(frozen=True, slots=True)
class Ready:
    """Who is ready for a target (None: the source doesn't know) and which source said so."""

    agents: set[str] | None
    source: str = "static"


class AgentSource(Protocol):
    """Who is logged in and ready for a target right now, read on the caller's connection
    (the pacing transaction): shared agent state lives in the database, so every instance
    paces on the same answer."""

    async def ready(self, conn: asyncpg.Connection, target: str) -> Ready: ...


class StaticAgents:
    def __init__(self, targets: dict[str, Target]) -> None:
        self.targets = targets

    async def ready(self, conn: asyncpg.Connection, target: str) -> Ready:
        t = self.targets[target]
        return Ready(set(t.agents) if t.agents else None, "static")


@dataclass(slots=True)
class Pace:
    target: str
    ready_agents: int
    wrapup_agents: int
    in_flight: int
    limit: int
    source: str = "static"
    agents: list[str] = field(default_factory=list)

    @property
    def free(self) -> int:
        return max(0, self.limit - self.in_flight)


async def measure(
    conn: asyncpg.Connection,
    name: str,
    t: Target,
    source: AgentSource,
    now: datetime,
) -> Pace:
    said = await source.ready(conn, name)
    ready = said.agents
    if ready is None:
        # all-agents mapping with no list: one agent's worth, the safe floor
        ready = set(t.agents) or {"*"}
    wrap: set[str] = set()
    if t.max_dispose_s:
        since = now - timedelta(seconds=t.max_dispose_s)
        wrap = {r["agent"] for r in await conn.fetch(Q.target_wrapup_agents, name, since)}
    available = ready - wrap
    limit = len(available) * t.calls_per_agent
    # exact up to a thousand (what operators read), bounded beyond: pacing needs no more
    in_flight = await conn.fetchval(Q.target_in_flight, name, max(limit + 1, 1000))
    return Pace(
        target=name,
        ready_agents=len(available),
        wrapup_agents=len(ready & wrap),
        in_flight=int(in_flight),
        limit=limit,
        source=said.source,
        agents=sorted(available),
    )
