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


class AgentSource(Protocol):
    """Who is logged in and ready for a target right now (None: this source doesn't know)."""

    def ready(self, target: str) -> set[str] | None: ...


class StaticAgents:
    def __init__(self, targets: dict[str, Target]) -> None:
        self.targets = targets

    def ready(self, target: str) -> set[str] | None:
        t = self.targets[target]
        return set(t.agents) if t.agents else None


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
    source_name: str = "static",
) -> Pace:
    ready = source.ready(name)
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
        source=source_name,
        agents=sorted(available),
    )
