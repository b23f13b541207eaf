"""The provider call-rate budget (``[providers.ryng]``), one for every instance on the database.

The rule, checked just before each send under the budget row's lock (so instances queue
on it): the calls of every send that still counts, plus this chunk's, stay within
``C = max(1, floor(max_calls_per_s))`` over a window of ``W = max(1 s, C / max_calls_per_s)``
(and likewise one request against ``max_requests_per_s``). A send counts from its
reservation until ``W`` after its request *finished*: whenever a request reaches the
provider, it is inside that span, so no window of ``W`` at the provider ever sees more
than ``C`` calls, however long requests take to arrive. Hence **never more than
max_calls_per_s calls in any 1-second window**, with no burst allowance; the cost is
that a slow provider lowers the rate a little (each send holds its share of the budget
for its own request time too).

Chunks larger than ``C`` are never recorded while a budget is set: the fill splits them
to ``C`` rows (``max_chunk``). A chunk recorded before the budget was configured still
goes, alone in an empty window.

A 429 lowers the rate (AIMD): the window stretches to ``W / factor`` with the factor
halved (at most once per window, floor 5 %), then the factor climbs back linearly, to
full after ``rate_recover_s`` from nothing; a ``Retry-After`` (of a 429, or of a 503)
holds every instance's sends until it passes. Each lowering is logged and recorded as an event.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg

from dialer.clock import Clock
from dialer.config import RyngLimits
from dialer.store.queries import Q

log = logging.getLogger(__name__)

MIN_FACTOR = 0.05
DECREASE = 0.5
POLL_MAX_S = 0.5  # re-read the budget at least this often while waiting (others may lower it)
# A chunk waits for the budget while claimed ('sending'); one that would wait longer than this
# (a long Retry-After hold) is given back until then, far from the orphan check's claim limit.
HOLD_CLAIM_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` units in any window of ``window_s`` (at the full rate)."""

    count: int
    window_s: float

    @classmethod
    def per_second(cls, rate: float) -> Limit:
        count = max(1, math.floor(rate))
        return cls(count, max(1.0, count / rate))


@dataclass(frozen=True, slots=True)
class Counted:
    reserved_at: datetime
    finished_at: datetime | None
    calls: int


@dataclass(frozen=True, slots=True)
class Aimd:
    factor: float = 1.0
    changed_at: datetime | None = None
    blocked_until: datetime | None = None

    def factor_at(self, now: datetime, recover_s: float) -> float:
        """Additive recovery: +1/recover_s of the budget per second since the last decrease."""
        if self.changed_at is None:
            return self.factor
        climbed = max(0.0, (now - self.changed_at).total_seconds()) / recover_s
        return min(1.0, self.factor + climbed)

    def lowered(self, now: datetime, recover_s: float, window_s: float,
                retry_after_s: float | None) -> tuple[Aimd, bool]:
        """After a 429 at ``now``: multiplicative decrease, at most once per (stretched) window,
        so a burst of 429s from parallel sends counts as one; returns (new state, lowered?)."""
        f = self.factor_at(now, recover_s)
        hold = self.blocked_until
        if retry_after_s:
            until = now + timedelta(seconds=retry_after_s)
            hold = until if hold is None or until > hold else hold
        if self.changed_at is not None and (now - self.changed_at).total_seconds() < window_s / f:
            return Aimd(self.factor, self.changed_at, hold), False
        return Aimd(max(MIN_FACTOR, f * DECREASE), now, hold), True


def _expiry(s: Counted, now: datetime, window_s: float, stale_s: float) -> datetime:
    """When a counted send stops counting; if still unfinished, as if it finished now (one
    left unfinished past any request's time, its instance gone, as if it finished then)."""
    end = s.finished_at
    if end is None:
        end = min(now, s.reserved_at + timedelta(seconds=stale_s))
    return end + timedelta(seconds=window_s)


def wait_s(sends: Sequence[Counted], now: datetime, calls: int, call_limit: Limit | None,
           request_limit: Limit | None, factor: float, blocked_until: datetime | None = None,
           stale_s: float = 60.0) -> float:
    """Seconds until a send of ``calls`` fits the budget (0: now). Pure, for the tests."""
    wait = max(0.0, (blocked_until - now).total_seconds()) if blocked_until else 0.0
    for limit, units in ((call_limit, lambda s: s.calls), (request_limit, lambda s: 1)):
        if limit is None:
            continue
        window = limit.window_s / factor
        need = min(calls, limit.count) if limit is call_limit else 1
        ends = [(_expiry(s, now, window, stale_s), units(s)) for s in sends]
        live = sorted(e for e in ends if e[0] > now)
        used = sum(u for _, u in live)
        for until, u in live:
            if used + need <= limit.count:
                break
            used -= u
            # an unfinished send's expiry moves with now: look again soon rather than sleep long
            wait = max(wait, (until - now).total_seconds())
    return wait


@dataclass(slots=True)
class Reservation:
    id: int
    calls: int
    waited_s: float


@dataclass(slots=True)
class Deferred:
    """Not within ``HOLD_CLAIM_MAX_S``: try again in ``wait_s``."""

    wait_s: float


class RateBudget:
    """The budget of one provider, shared through the database."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock, limits: RyngLimits, provider: str = "ryng",
                 sleep: Callable[[float], Any] | None = None,
                 on_wait: Callable[[float], None] | None = None, request_timeout_s: float = 30.0) -> None:
        self.pool = pool
        self.stale_s = request_timeout_s + 5.0  # no request of ours is out longer than this
        self.clock = clock
        self.provider = provider
        self.on_wait = on_wait  # seconds a send waited for the budget: metrics
        self._sleep = sleep or anyio.sleep
        self.configure(limits)

    def configure(self, limits: RyngLimits) -> None:
        """Set (again, after a SIGHUP) the limits."""
        self.limits = limits
        self.calls = Limit.per_second(limits.max_calls_per_s) if limits.max_calls_per_s else None
        self.requests = Limit.per_second(limits.max_requests_per_s) if limits.max_requests_per_s else None

    @property
    def enabled(self) -> bool:
        return self.calls is not None or self.requests is not None

    def max_chunk(self, rows: int) -> int:
        """Chunks are split to what one window allows."""
        return min(rows, self.calls.count) if self.calls is not None else rows

    def _window(self) -> float:
        return max(x.window_s for x in (self.calls, self.requests) if x is not None)

    async def _try(self, calls: int, chunk_id: int | None) -> tuple[int | None, float]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q.rate_budget_ensure, self.provider)
            row = await conn.fetchrow(Q.rate_budget_lock, self.provider)
            now = self.clock.now()  # read under the lock: a send reserved before it is counted
            wait = await self._wait(conn, row, now, calls)
            if wait > 0:
                return None, wait
            # what can no longer count even at the lowest rate
            await conn.execute(Q.rate_budget_prune, self.provider,
                               now - timedelta(seconds=self._window() / MIN_FACTOR + 60))
            rid = await conn.fetchval(Q.rate_budget_reserve, self.provider, now, calls, chunk_id)
            return int(rid), 0.0

    async def _wait(self, conn: asyncpg.Connection, row: asyncpg.Record | None, now: datetime,
                    calls: int) -> float:
        """Seconds until ``calls`` fit, from the budget row and the sends that still count."""
        state = Aimd(row["factor"], row["changed_at"], row["blocked_until"]) if row else Aimd()
        factor = state.factor_at(now, self.limits.rate_recover_s)
        oldest = now - timedelta(seconds=self._window() / factor)
        sends = [Counted(r["reserved_at"], r["finished_at"], r["calls"])
                 for r in await conn.fetch(Q.rate_budget_counted, self.provider, oldest)]
        return wait_s(sends, now, calls, self.calls, self.requests, factor, state.blocked_until, self.stale_s)

    async def wait_for_one(self, conn: asyncpg.Connection, now: datetime | None = None) -> float:
        """Seconds until a 1-call send would fit (0: now, or no budget): read only — no lock,
        no reservation — for the waiting reasons (the budget simply full, or a Retry-After)."""
        if not self.enabled:
            return 0.0
        return await self._wait(conn, await conn.fetchrow(Q.rate_budget_get, self.provider),
                                now or self.clock.now(), 1)

    async def acquire(self, calls: int, chunk_id: int | None = None,
                      running: Callable[[], bool] = lambda: True,
                      max_wait_s: float = HOLD_CLAIM_MAX_S) -> Reservation | Deferred | None:
        """Wait until the budget lets ``calls`` go, and count them; Deferred when that is
        more than ``max_wait_s`` away; None if stopped meanwhile (or no budget is set)."""
        if not self.enabled:
            return None
        start = self.clock.monotonic()
        while running():
            rid, wait = await self._try(calls, chunk_id)
            waited = self.clock.monotonic() - start
            if rid is not None:
                if self.on_wait:
                    self.on_wait(waited)
                return Reservation(rid, calls, waited)
            if waited + wait > max_wait_s:
                return Deferred(wait)
            await self._sleep(min(max(wait, 0.005), POLL_MAX_S))
        return None

    async def finish(self, r: Reservation | None, status: int | None = None,
                     retry_after_s: float | None = None, chunk_id: int | None = None) -> bool:
        """The request is done (whatever its answer): its window starts now. A 429 lowers the
        rate; returns True when this one did."""
        if not self.enabled:
            return False
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if r is not None:
                await conn.execute(Q.rate_budget_finish, r.id, now)
            if status != 429 and not (status == 503 and retry_after_s):
                return False
            await conn.execute(Q.rate_budget_ensure, self.provider)
            row = await conn.fetchrow(Q.rate_budget_lock, self.provider)
            before = Aimd(row["factor"], row["changed_at"], row["blocked_until"])
            if status == 503:
                # unavailable, not "too fast": the rate stays, but its Retry-After holds every
                # instance's sends as a 429's does (SPEC §5: Retry-After honoured)
                until = now + timedelta(seconds=retry_after_s or 0)
                held = max(until, before.blocked_until or until)
                await conn.execute(Q.rate_budget_lower, self.provider, before.factor, before.changed_at,
                                   held, False)
                return False
            after, lowered = before.lowered(now, self.limits.rate_recover_s, self._window(), retry_after_s)
            await conn.execute(Q.rate_budget_lower, self.provider, after.factor, after.changed_at,
                               after.blocked_until, lowered)
            if lowered:
                detail = {"provider": self.provider, "factor": round(after.factor, 4),
                          "calls_per_s": self.rate(after.factor), "retry_after_s": retry_after_s,
                          "chunk_id": chunk_id, "recover_s": self.limits.rate_recover_s}
                await conn.execute(Q.event_insert, None, now, "rate_budget_lowered", None, None, True, detail)
        if lowered:
            log.warning("provider answered 429: rate budget lowered", extra=detail)
        return lowered

    def rate(self, factor: float) -> float | None:
        """Calls per second allowed at this factor (None: no call budget)."""
        if self.calls is None:
            return None
        return round(self.calls.count / self.calls.window_s * factor, 4)

    async def snapshot(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """The shared state for metrics: effective calls/s, factor, lowered count, hold."""
        now = self.clock.now()
        row = await conn.fetchrow(Q.rate_budget_get, self.provider)
        state = Aimd(row["factor"], row["changed_at"], row["blocked_until"]) if row else Aimd()
        factor = state.factor_at(now, self.limits.rate_recover_s)
        hold = max(0.0, (state.blocked_until - now).total_seconds()) if state.blocked_until else 0.0
        return {"factor": factor, "calls_per_s": self.rate(factor),
                "lowered_total": int(row["lowered_total"]) if row else 0, "hold_s": hold}
