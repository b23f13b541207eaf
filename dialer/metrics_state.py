"""What the state gauges show, read from the database at scrape time.

Kept apart from the instruments in ``metrics.py``: this module reads (named queries, one
connection), that one only sets numbers. Reading at scrape time makes the gauges right
after a restart and equal across instances sharing one database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dialer.dispatch import abandon
from dialer.dispatch.pacing import Pace, StaticAgents, measure
from dialer.store.queries import Q

if TYPE_CHECKING:
    from dialer.http.context import AppContext

# Calls waiting for the provider's next callback: handed over, or ringing an agent.
WAITING_FOR_CALLBACK = ["queued", "assigned"]


@dataclass
class Readings:
    by_state: dict[tuple[str, str], int] = field(default_factory=dict)  # (target, state) → calls
    paused: dict[str, bool] = field(default_factory=dict)
    callback_wait_s: dict[str, float] = field(default_factory=dict)
    paces: dict[str, Pace] = field(default_factory=dict)
    webhook_backlog: int = 0
    results_file_backlog: int = 0
    callbacks: dict[tuple[str, str], int] = field(default_factory=dict)  # (target, status) → open callbacks
    queue_depth: dict[str, int | None] = field(default_factory=dict)  # callers waiting at the provider


async def read(ctx: AppContext, dispatcher: Any, now: datetime) -> Readings:
    """One pass over the database for every state gauge."""
    settings = ctx.settings
    agents = dispatcher.agents if dispatcher is not None else StaticAgents(settings.targets)
    out = Readings()
    async with ctx.pool.acquire() as conn:
        out.by_state = {(x["target"], x["state"]): x["n"] for x in await conn.fetch(Q.target_counts)}
        out.paused = {x["target"]: bool(x["paused"]) for x in await conn.fetch(Q.target_state_all)}
        out.callback_wait_s = {x["target"]: max(0.0, float(x["age"] or 0.0)) for x in
                               await conn.fetch(Q.metrics_callback_wait, now, WAITING_FOR_CALLBACK)}
        for name, t in settings.targets.items():
            pace = await measure(conn, name, t, agents, now)
            out.paces[name] = await abandon.as_dispatched(conn, name, t, pace)
            depth = getattr(agents, "depth", None)  # the providers' selector; not static agents
            out.queue_depth[name] = await depth(conn, name) if depth is not None else None
        out.webhook_backlog = int(await conn.fetchval(Q.webhook_backlog) or 0)
        out.results_file_backlog = int(await conn.fetchval(Q.results_file_backlog) or 0)
        for x in await conn.fetch(Q.metrics_callbacks, now):
            for status in ("upcoming", "due", "overdue"):
                out.callbacks[(x["target"], status)] = x[status]
    return out
