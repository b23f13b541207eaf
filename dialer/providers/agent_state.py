"""Agent state in PostgreSQL, shared by every instance: the one module that reads and
writes ``agent_status``, ``agent_views`` and ``provider_polls`` (migration 0007).

Behind a load balancer an agent event reaches one instance and a poll runs on one
instance, but every instance paces on what they said: so it is kept here, not in memory.

* An event is applied only when it is newer than what the table holds — its time (the
  event's own, else when it reached an instance), then the database's arrival sequence —
  so a late event never overrides a newer one and a repeat changes nothing.
* A provider poll runs once per interval across instances: under a transaction-scoped
  advisory lock (``jobs.singleton``), only when the last poll, by anyone, is due again.
  Its result is written in the same transaction: an instance killed mid-poll leaves
  nothing half-written, and the next instance polls at once.

Times are the instances' clocks (``Clock.now``): keep them in step (NTP), as heartbeats
already require.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dialer.clock import Clock
from dialer.jobs import singleton
from dialer.store.queries import Q

CHANGED, REPEAT, STALE = "changed", "repeat", "stale"
WHOLE_SOURCE = ""  # agent_views.target for what is not per target (ringme events)


@dataclass(frozen=True, slots=True)
class SourceView:
    """What a provider says about a target, for the agent selector."""

    ready: set[str] | None  # None: the source knows no agent status yet
    heard_at: datetime | None  # when it last spoke for the target (None: never)
    depth: int | None = None  # callers waiting in its queue
    counters: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """One source's rows for one target, as read at pacing time."""

    ready: set[str] | None  # the target's ready agents from a poll (PortSIP); None: none saved
    available: set[str]  # agents whose last event status is the one asked for (ringme)
    known: bool  # any agent status of this source is known
    heard_at: datetime | None  # last word for this target (a poll)
    source_heard_at: datetime | None  # last word for the whole source (an event)
    depth: int | None
    counters: dict[str, int] | None


async def read(conn: asyncpg.Connection, source: str, target: str, available_status: str = "") -> Stored:
    r = await conn.fetchrow(Q.agent_view_read, source, target, available_status)
    counters: Any = r["counters"]
    return Stored(
        ready=set(r["ready"]) if r["ready"] is not None else None,
        available=set(r["available"]),
        known=bool(r["known"]),
        heard_at=r["heard_at"],
        source_heard_at=r["source_heard_at"],
        depth=r["depth"],
        counters={k: int(v) for k, v in counters.items()} if isinstance(counters, dict) else None,
    )


async def apply_event(conn: asyncpg.Connection, source: str, agent: str, status: str, raw_id: str,
                      event_at: datetime, now: datetime) -> str:
    """One agent's new status: ``changed``, ``repeat`` (the status it already had) or
    ``stale`` (an older event than the one the table holds, saying something else)."""
    async with conn.transaction():
        before = await conn.fetchrow(Q.agent_status_lock, source, agent)
        moved = await conn.fetchval(Q.agent_status_apply, source, agent, status, raw_id, event_at, now)
        await conn.execute(Q.agent_view_heard, source, WHOLE_SOURCE, now)
    if before is not None and before["status"] == status:
        return REPEAT
    return CHANGED if moved is not None else STALE


async def heard(conn: asyncpg.Connection, source: str, at: datetime, target: str = WHOLE_SOURCE) -> None:
    """The source spoke (an event we could not map still proves it is alive)."""
    await conn.execute(Q.agent_view_heard, source, target, at)


async def save_poll(conn: asyncpg.Connection, source: str, target: str, at: datetime, *,
                    ready: set[str] | None = None, depth: int | None = None,
                    counters: dict[str, int] | None = None) -> None:
    await conn.execute(Q.agent_view_save, source, target, sorted(ready) if ready is not None else None,
                       depth, counters, at)


async def poll_turn(pool: asyncpg.Pool, source: str, instance: str, every_s: float, clock: Clock,
                    poll: Callable[[asyncpg.Connection], Awaitable[object]]) -> float:
    """Run ``poll`` here if no instance is polling ``source`` now and its last poll is
    due again; returns the seconds until this instance should try again."""

    async def go(conn: asyncpg.Connection) -> float:
        now = clock.now()
        last = await conn.fetchval(Q.provider_poll_last, source)
        if last is not None:
            wait = every_s - (now - last).total_seconds()
            if wait > 0.01:  # polled by someone within the interval (capped: a skewed clock)
                return float(min(wait, every_s))
        await conn.execute(Q.provider_poll_done, source, now, instance)
        await poll(conn)
        return every_s

    out = await singleton(pool, f"poll:{source}", go)
    # None: another instance holds the lock, polling now; look again in one interval
    return float(out) if isinstance(out, float) else every_s
