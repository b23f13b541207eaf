"""The abandon-rate guard of ``customer-first`` targets (SPEC §10; the FTC's 3 % rule).

The rate is the target's rolling 30 days: calls ended ``abandoned`` over calls a customer
picked up (``answered`` + ``abandoned``: the FTC counts abandoned calls among the calls
answered by a person). Read in the fill transaction, under the target's dispatch lock, at
most every ``CHECK_EVERY_S`` per instance; the level is kept in ``abandon_guard`` so every
instance and the metrics see one answer.

* rate > ``abandon_slowdown_pct``: ``slowdown`` — pacing drops to one call per ready agent.
* rate ≥ ``abandon_max_pct``: ``paused`` — the target pauses itself (``paused_reason``
  ``abandon_guard``), with an event and a log line; the metric drives the alert.
* an operator who resumes a self-paused target overrides the guard: ``overridden`` keeps
  the slowdown and pauses again only once the rate has fallen below the maximum and
  reached it again.

Re-dials of an abandoned lead wait at least ``abandon_redial_min`` (lifecycle/recycle.py).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from dialer.clock import Clock
from dialer.config import Target
from dialer.dispatch.pacing import Pace
from dialer.store.queries import Q

log = logging.getLogger(__name__)

WINDOW = timedelta(days=30)
CHECK_EVERY_S = 5.0
LEVELS = ("ok", "slowdown", "paused", "overridden")
BY = "abandon_guard"  # target_state.paused_reason of a self-pause


def watched(t: Target) -> bool:
    return t.leg_direction == "customer-first"


@dataclass(frozen=True, slots=True)
class Reading:
    level: str
    rate: float
    abandoned: int
    picked_up: int


def next_level(current: str, rate: float, t: Target, paused: bool) -> str:
    """Where the guard goes from ``current`` at ``rate`` (0..1); ``paused``: the target is
    paused now (by anyone). Pure, for the tests."""
    pct = round(rate * 100.0, 9)  # 1 / 40 is 2.5 %, not 2.5000000000000004
    if current == "paused" and not paused:
        current = "overridden"  # resumed by an operator while self-paused
    if pct >= t.abandon_max_pct:
        return current if current in ("paused", "overridden") else "paused"
    if pct > t.abandon_slowdown_pct:  # "past" it (SPEC §10); the maximum counts when reached
        return "slowdown"
    return "ok"


def slowed(pace: Pace, level: str | None) -> Pace:
    """The pace under the guard's level: one call per ready agent unless it is ``ok``."""
    if level in ("slowdown", "overridden", "paused"):
        return dataclasses.replace(pace, limit=min(pace.limit, pace.ready_agents))
    return pace


async def as_dispatched(conn: asyncpg.Connection, name: str, t: Target, pace: Pace) -> Pace:
    """The pace the dispatcher works to, for those who measure it on their own (the waiting
    counts, the pacing gauges, GET /v1/targets): the guard's shared level applied, else a
    slowed target would show room it does not use."""
    if not watched(t):
        return pace
    row = await conn.fetchrow(Q.abandon_guard_get, name)
    return slowed(pace, row["level"] if row else None)


class Guard:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._checked: dict[str, float] = {}  # target -> monotonic time of the last count
        self._level: dict[str, str] = {}

    async def check(self, conn: asyncpg.Connection, name: str, t: Target, pace: Pace, paused: bool,
                    now: datetime) -> tuple[Pace, bool]:
        """In the fill transaction, under the target's dispatch lock: the pace to use and
        whether the target is paused (perhaps just now, by the guard)."""
        if not watched(t):
            return pace, paused
        level = self._level.get(name)
        due = self.clock.monotonic() - self._checked.get(name, float("-inf")) >= CHECK_EVERY_S
        if level is None or due or (level == "paused" and not paused):
            level = await self._evaluate(conn, name, t, paused, now)
        if level == "paused":
            paused = True
        return slowed(pace, level), paused

    async def _evaluate(self, conn: asyncpg.Connection, name: str, t: Target, paused: bool,
                        now: datetime) -> str:
        row = await conn.fetchrow(Q.abandon_counts, name, now - WINDOW)
        abandoned, picked_up = int(row["abandoned"]), int(row["picked_up"])
        rate = abandoned / picked_up if picked_up else 0.0
        prev = await conn.fetchrow(Q.abandon_guard_get, name)
        current = prev["level"] if prev else "ok"
        level = next_level(current, rate, t, paused)
        changed = prev is None or level != current
        await conn.execute(Q.abandon_guard_set, name, level, rate, abandoned, picked_up, now,
                           now if changed else prev["changed_at"])
        if changed and (prev is not None or level != "ok"):
            detail = {"target": name, "from": current, "to": level, "rate_pct": round(rate * 100, 3),
                      "abandoned": abandoned, "picked_up": picked_up,
                      "abandon_slowdown_pct": t.abandon_slowdown_pct, "abandon_max_pct": t.abandon_max_pct}
            await conn.execute(Q.event_insert, None, now, f"abandon_{level}", None, None, True, detail)
            if level == "paused":
                await conn.execute(Q.target_pause, name, True, BY, now)
                log.warning("abandon rate reached abandon_max_pct: target paused itself", extra=detail)
            elif level in ("slowdown", "overridden"):
                log.warning("abandon rate high: one call per ready agent", extra=detail)
            else:
                log.info("abandon rate back under abandon_slowdown_pct: normal pacing", extra=detail)
        self._checked[name] = self.clock.monotonic()
        self._level[name] = level
        return level


LEVEL_VALUE = {"ok": 0.0, "slowdown": 1.0, "overridden": 1.0, "paused": 2.0}
