"""Progressive pacing: calls in flight never exceed ready agents x calls_per_agent.

An agent is busy while on a call and for ``max_dispose_s`` after it ends (wrap-up).
Who is ready comes from an agent source (agent events, status polls, else the target's
static agent list).

A target with a ``global`` agent list names the agents of each request, so pacing is
kept per agent: each call goes to one agent with room for it (``Pace.takers``), and an
agent's calls in flight are those directed to it or taken by it. So an agent whose
wrap-up ends gets the next call, not whichever agent a rotation comes to, and the
dispatcher wakes when the first wrap-up ends (``Pace.next_ready_at``) instead of at its
next tick.
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
    agents: list[str] = field(default_factory=list)  # ready agents, not in wrap-up
    # pacing by agent: who has room for the next calls (most room first), and for how many
    takers: list[str] | None = None
    room: int | None = None
    next_ready_at: datetime | None = None  # when the first wrap-up ends

    @property
    def free(self) -> int:
        free = max(0, self.limit - self.in_flight)
        return free if self.room is None else min(free, self.room)


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
    dispose = timedelta(seconds=t.max_dispose_s or 0)
    # exact up to a thousand (what operators read), bounded beyond: pacing needs no more
    bound = max(len(ready) * t.calls_per_agent + 1, 1000)
    rows = await conn.fetch(Q.target_pacing, name, bound, now - dispose if t.max_dispose_s else None)
    load = {r["agent"]: r["n"] for r in rows if not r["wrap"]}
    ended = {r["agent"]: r["ended_at"] for r in rows if r["wrap"]}
    wrap = set(ended)
    next_ready_at = min((at + dispose for a, at in ended.items() if a in ready), default=None)
    available = ready - wrap
    limit = len(available) * t.calls_per_agent
    in_flight = sum(load.values())
    if t.agent_mapping != "global":
        return Pace(name, len(available), len(ready & wrap), in_flight, limit, said.source,
                    sorted(available), next_ready_at=next_ready_at)
    room = {a: t.calls_per_agent - load.get(a, 0) for a in available}
    # most room first; among equals, the agent whose name sorts first (a stable order)
    takers = sorted((a for a, n in room.items() if n > 0), key=lambda a: (-room[a], a))
    return Pace(name, len(available), len(ready & wrap), in_flight, limit, said.source,
                sorted(available), takers=takers, room=round_robin_room([room[a] for a in takers]),
                next_ready_at=next_ready_at)


def round_robin_room(rooms: list[int]) -> int:
    """How many calls a request can direct round-robin over agents with these rooms (most
    first; the provider deals a request's calls out in turn) before one would get more
    than its room: row n is the (n // k + 1)-th call of agent n % k."""
    k, n, total = len(rooms), 0, sum(rooms)
    while n < total and n // k < rooms[n % k]:
        n += 1
    return n
