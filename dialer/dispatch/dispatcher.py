"""The dispatch loop: fill each target up to its pacing limit, send recorded chunks.

Several instances may run this against one database: chunk creation is serialised per
target by an advisory lock (so pacing holds across instances), and recorded chunks are
claimed with ``FOR UPDATE SKIP LOCKED`` (so each is sent by exactly one instance).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg

from dialer import supervisor
from dialer.clock import Clock
from dialer.config import Settings
from dialer.dispatch import callbacks_owned, compliance, outbox
from dialer.dispatch.abandon import Guard
from dialer.dispatch.breaker import Breaker
from dialer.dispatch.budget import Deferred, RateBudget, Reservation
from dialer.dispatch.pacing import AgentSource, Pace, StaticAgents, measure
from dialer.dispatch.recheck import recheck
from dialer.lifecycle import observe
from dialer.lifecycle.moves import chunk_calls, chunk_taken
from dialer.lifecycle.observe import Ended
from dialer.lifecycle.states import State
from dialer.providers.ryng.client import RyngClient, SendResult
from dialer.store.queries import Q
from dialer.store.retry import DB_DOWN, transient

log = logging.getLogger(__name__)

MAX_SEND_ATTEMPTS = 8
RECHECK_AFTER_WAIT_S = 2.0  # a chunk that waited this long for the rate budget is re-checked
IDLE_FILLS_MAX = 50  # fills in a row that only set calls aside before the next target's turn


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        clock: Clock,
        client: RyngClient,
        secret: bytes,
        instance_id: str,
        agents: AgentSource | None = None,
        rng: random.Random | None = None,
        on_send: Callable[[str, SendResult], None] | None = None,
        on_settled: Callable[[outbox.Claimed, SendResult, str], None] | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.client = client
        self.secret = secret
        self.instance_id = instance_id
        self.agents: AgentSource = agents or StaticAgents(settings.targets)
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self.on_send = on_send
        self.on_settled = on_settled  # (chunk, result, sent|retry|failed|rejected|uncertain): metrics
        self.breakers = {name: Breaker(clock) for name in settings.targets}
        self.rules = compliance.Rules(settings)
        self.paces: dict[str, Pace] = {}
        self._measured: set[str] = set()  # targets whose pace the current or last tick measured
        self._margins: dict[str, int] = {}  # per target: candidates read past a chunk (outbox.Fill)
        self._moved: dict[str, bool] = {}  # per target: its last fill set calls aside
        self._walked_at: dict[str, float] = {}  # per target: a fill last read past an incoming batch
        self._wake = anyio.Event()
        self.running = True
        self.max_parallel_sends = 4
        self._unsent: set[int] = set()  # claimed, never sent, not yet given back
        self._ryng_hold: float | None = None  # monotonic: no send before this (a Retry-After)
        self.budget = RateBudget(pool, clock, settings.providers.ryng,
                                 request_timeout_s=settings.ryng_timeout_s)
        self.abandon = Guard(clock)

    def wake(self) -> None:
        self._wake.set()

    # -- filling -------------------------------------------------------------------
    async def fill_target(self, name: str) -> int:
        """Record one chunk for the target if pacing allows; returns calls claimed."""
        breaker = self.breakers.setdefault(name, Breaker(self.clock))  # a target added by SIGHUP
        self._moved[name] = False
        if not breaker.fillable():
            return 0
        now = self.clock.now()
        ended: list[Ended] = []
        margin = self._margins.get(name, 0)
        walked = self._walked_at.get(name, float("-inf"))
        walk_all = self.clock.monotonic() - walked >= outbox.FULL_WALK_EVERY_S
        look = outbox.Fill(margin, walk_all)

        async def fill() -> int:
            nonlocal look
            ended.clear()
            look = outbox.Fill(margin, walk_all)  # a retried fill starts afresh
            return await self._fill(name, now, ended, look)

        n = await transient(fill, "dispatch fill")
        observe.ended(ended)  # the claim committed
        self._margins[name] = look.next_margin()
        self._moved[name] = look.moved()
        if look.walked_all:
            self._walked_at[name] = self.clock.monotonic()
        return n

    def _fill_again(self, name: str, n: int, idle: int) -> bool:
        """Whether the fill loop goes on with this target: it took calls, or it set some
        aside (held, ended, released) — the next fill reads past them — for at most
        ``IDLE_FILLS_MAX`` fills in a row that took none (the other targets' turn)."""
        if not self.running:
            return False
        return n > 0 or (self._moved.get(name, False) and idle < IDLE_FILLS_MAX)

    async def _fill(self, name: str, now: datetime, ended: list[Ended], look: outbox.Fill) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q.dispatch_lock_target, name)
            # read under the lock: a pause that committed before it is seen here
            state = await conn.fetchrow(Q.target_state_get, name)
            t = self.settings.targets[name]
            pace = await measure(conn, name, t, self.agents, now)
            pace, paused = await self.abandon.check(conn, name, t, pace, bool(state and state["paused"]), now)
            self.paces[name] = pace
            self._measured.add(name)
            if paused:
                return 0
            size = self.budget.max_chunk(t.chunk_size)  # a chunk never needs more than the budget's window
            owned = await callbacks_owned.record_owned(conn, self.settings, self.secret, name, pace, now,
                                                       self.rules, ended, size)
            return owned + await outbox.record_chunk(conn, self.settings, self.secret, name, pace, now,
                                                     size, self.rules, ended, look)

    async def fill_all(self) -> int:
        total = 0
        for name in self.settings.targets:
            try:
                idle = 0
                while self.running:
                    n = await self.fill_target(name)
                    total += n
                    idle = 0 if n else idle + 1
                    if not self._fill_again(name, n, idle):
                        break
            except DB_DOWN as e:
                log.warning("dispatch fill failed; will retry", extra={"target": name, "error": str(e)})
        return total

    # -- sending -------------------------------------------------------------------
    async def send_one(self) -> bool:
        if self._unsent:
            await self._release_unsent()
        now = self.clock.now()
        if self._ryng_hold is not None and self.clock.monotonic() < self._ryng_hold:
            # Ryng asked us to wait (429 + Retry-After): nothing goes out until then. (With a
            # shared rate budget configured, the budget holds every instance instead.)
            return False
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q.chunk_claim, self.instance_id, now)
        if row is None:
            return False
        c = outbox.Claimed(row["id"], row["target"], row["token"], dict(row["request"]), row["kind"],
                           row["attempts"], row["rows"], row["created_at"])
        breaker = self.breakers.get(c.target)
        if breaker is not None and not breaker.allow():
            wait = float(str(breaker.snapshot()["retry_in_s"])) or 1.0
            async with self.pool.acquire() as conn:
                await conn.execute(Q.chunk_retry_later, c.id, None, None, "circuit open",
                                   now + timedelta(seconds=wait))
            return True
        checked = await self._recheck(c, now)
        if checked is None:
            return True
        held = await self._within_budget(checked)
        if held is None:
            return True
        checked, reservation = held
        result = await self._post(checked)
        if result.status in (429, 503) and result.retry_after_s is not None \
                and not self.budget.enabled:
            # Retry-After is about the API, not this request: hold every send of this
            # instance (a shared rate budget, when configured, holds every instance itself)
            until = self.clock.monotonic() + result.retry_after_s  # a wall-clock step moves it not
            self._ryng_hold = max(self._ryng_hold or until, until)
        await self._budget_done(reservation, checked, result)
        if self.on_send:
            self.on_send(c.target, result)
        await self._settle(checked, result)
        return True

    async def _recheck(self, c: outbox.Claimed, now: datetime) -> outbox.Claimed | None:
        """Take out the rows that may no longer be sent; None when nothing is left."""
        async def go() -> outbox.Claimed | None:
            async with self.pool.acquire() as conn, conn.transaction():
                checked = await recheck(conn, self.settings, self.rules, c, now)
            observe.ended(checked.ended)
            if checked.removed:
                log.info("rows taken out of a chunk just before sending",
                         extra={"target": c.target, "chunk": c.id, "removed": checked.removed,
                                "left": checked.chunk.rows if checked.chunk else 0})
            return checked.chunk

        try:
            return await transient(go, "send-time re-check")
        except BaseException:
            # not sent: give the chunk back so it is not left 'sending' until the orphan check
            with anyio.CancelScope(shield=True):
                await self._release(c)
            raise

    async def _within_budget(self, c: outbox.Claimed) -> tuple[outbox.Claimed, Reservation | None] | None:
        """Wait for the provider rate budget (dispatch/budget.py); None when the chunk is not
        to be sent now (stopping: given back; emptied by the re-check after a long wait)."""
        if not self.budget.enabled:
            return c, None
        try:
            r = await self.budget.acquire(c.rows, c.id, lambda: self.running)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(c)
            raise
        if r is None:
            await self._release(c)
            return None
        if isinstance(r, Deferred):  # a long hold: not kept claimed meanwhile
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute(Q.chunk_budget_later, c.id,
                                       self.clock.now() + timedelta(seconds=r.wait_s))
            except Exception:
                await self._release(c)  # given back as "not sent" instead, when the database allows
            return None
        if r.waited_s >= RECHECK_AFTER_WAIT_S:
            checked = await self._recheck(c, self.clock.now())
            if checked is None:
                await self._budget_done(r, c, None)
                return None
            c = checked
        return c, r

    async def _budget_done(self, r: Reservation | None, c: outbox.Claimed, result: SendResult | None) -> None:
        """The request is over: its window runs from now; a 429 lowers the shared rate. Never
        in the way of settling the send."""
        if not self.budget.enabled:
            return
        try:
            await self.budget.finish(r, result.status if result else None,
                                     result.retry_after_s if result else None, c.id)
        except Exception as e:  # the reservation ages out by itself
            log.warning("could not record the end of a send in the rate budget",
                        extra={"chunk": c.id, "error": type(e).__name__})

    async def _release(self, c: outbox.Claimed) -> None:
        self._unsent.add(c.id)
        await self._release_unsent()

    async def _release_unsent(self) -> None:
        """Chunks we claimed but never sent (the re-check failed, e.g. the database went
        away): back to recorded, so they go out when it returns instead of waiting for the
        orphan check to call them uncertain."""
        for chunk_id in sorted(self._unsent):
            try:
                async with self.pool.acquire(timeout=2) as conn:
                    await conn.execute(Q.chunk_retry_later, chunk_id, None, None, "not sent: re-check failed",
                                       self.clock.now() + timedelta(seconds=1))
            except Exception as e:  # still away: tried again before the next claim
                log.warning("could not release an unsent chunk yet",
                            extra={"chunk": chunk_id, "error": str(e)})
                return
            self._unsent.discard(chunk_id)

    async def _post(self, c: outbox.Claimed) -> SendResult:
        req = c.request
        kind = req.get("kind")
        if kind == "queue":
            return await self.client.append(str(req["queue_id"]), req["body"])
        if kind == "campaign_sheet":
            return await self.client.create_campaign_sheet(str(req["sheet"]).encode(), req["body"])
        return await self.client.create_campaign(req["body"])

    async def _settle(self, c: outbox.Claimed, r: SendResult) -> None:
        """Record the send's outcome. The request is out, so this must not be lost: a
        database that is away is waited for (while the orphan check, which now also takes
        chunks claimed too long ago, is the last resort)."""
        breaker = self.breakers.get(c.target) or Breaker(self.clock)
        if r.kind == "ok":
            breaker.success()
        elif r.kind != "rejected" or r.status in (401, 403):
            breaker.failure()
        delay = 0.2
        for attempt in range(1, 30):
            try:
                settled, ended = await transient(lambda: self._settle_once(c, r), "settle a send")
                break
            except DB_DOWN as e:
                log.warning("cannot record a send's outcome yet; retrying",
                            extra={"chunk": c.id, "error": type(e).__name__, "attempt": attempt})
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            log.error("gave up recording a send's outcome; the orphan check will settle it",
                      extra={"chunk": c.id})
            return
        observe.ended(ended)
        if self.on_settled:
            self.on_settled(c, r, settled)

    async def _settle_once(self, c: outbox.Claimed, r: SendResult) -> tuple[str, list[Ended]]:
        now = self.clock.now()
        response = {"status": r.status, "body": r.body, "error": r.error}
        ended: list[Ended] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if r.kind == "ok":
                # applied whatever state the chunk is in now: a late 200 after the orphan
                # check marked it uncertain still counts (SPEC §5)
                await chunk_taken(conn, c.id, now, "provider answered", r.status, r.body)
                return "sent", ended
            if r.kind == "retry" and c.attempts < MAX_SEND_ATTEMPTS:
                delay = r.retry_after_s if r.retry_after_s is not None else self._backoff(c.attempts)
                await conn.execute(Q.chunk_retry_later, c.id, r.status, response, r.error,
                                   now + timedelta(seconds=delay))
                log.warning("provider send will be retried",
                            extra={"target": c.target, "chunk": c.id, "attempt": c.attempts,
                                   "error": r.error, "retry_in_s": round(delay, 2)})
                return "retry", ended
            if r.kind == "retry":
                if await conn.fetchval(Q.chunk_finish, c.id, "failed", r.status, response, r.error, now):
                    await chunk_calls(conn, c.id, State.SUBMITTING, State.PENDING, "send_failed", now,
                                      {"chunk_id": c.id, "error": r.error})
                return "failed", ended
            if r.kind == "rejected":
                if await conn.fetchval(Q.chunk_finish, c.id, "rejected", r.status, response, r.error, now):
                    ended = await chunk_calls(
                        conn, c.id, State.SUBMITTING, State.REJECTED_BY_PROVIDER, "rejected", now,
                        {"chunk_id": c.id, "status": r.status, "response": r.body})
                log.error("provider rejected a chunk",
                          extra={"target": c.target, "chunk": c.id, "status": r.status})
                return "rejected", ended
            # unknown: it may have been taken; never resend blindly
            if await conn.fetchval(Q.chunk_finish, c.id, "uncertain", r.status, response, r.error, now):
                await chunk_calls(conn, c.id, State.SUBMITTING, State.UNCERTAIN, "uncertain", now,
                                  {"chunk_id": c.id, "error": r.error, "status": r.status})
            log.warning("provider send outcome unknown; calls wait as uncertain",
                        extra={"target": c.target, "chunk": c.id, "error": r.error, "status": r.status})
            return "uncertain", ended

    def _backoff(self, attempt: int) -> float:
        base = min(60.0, 0.5 * 2.0 ** max(0, attempt - 1))
        return float(base * (0.5 + self.rng.random()))  # full jitter around the exponential step

    async def send_all(self) -> int:
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while self.running and await self.send_one():
                sent += 1

        async with anyio.create_task_group() as tg:
            for _ in range(self.max_parallel_sends):
                tg.start_soon(worker)
        return sent

    # -- the loop ---------------------------------------------------------------------
    async def tick(self) -> dict[str, Any]:
        """Fill and send at once: each chunk goes out as soon as it is recorded, so the
        database (recording) and the provider round trips (sending) overlap."""
        filled = 0
        filling = True
        recorded = anyio.Event()
        sent = 0
        self._measured = set()

        async def fill() -> None:
            nonlocal filled, filling, recorded
            try:
                for name in self.settings.targets:
                    idle = 0
                    while self.running:
                        try:
                            n = await self.fill_target(name)
                        except DB_DOWN as e:
                            log.warning("dispatch fill failed; will retry",
                                        extra={"target": name, "error": str(e)})
                            break
                        filled += n
                        recorded.set()
                        recorded = anyio.Event()
                        idle = 0 if n else idle + 1
                        if not self._fill_again(name, n, idle):
                            break
            finally:
                filling = False
                recorded.set()

        async def send() -> None:
            nonlocal sent
            while self.running:
                if await self.send_one():
                    sent += 1
                    continue
                if not filling:
                    return
                await recorded.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(fill)
            for _ in range(self.max_parallel_sends):
                tg.start_soon(send)
        return {"filled": filled, "sent": sent}

    def next_due_s(self, interval_s: float) -> float:
        """Seconds until the next tick is due: the interval, or sooner when an agent's
        wrap-up ends first (it may take its next call then, not at the next tick)."""
        now = self.clock.now()
        # Only paces the last tick measured: one measured earlier (a target whose breaker
        # is open) would wake us for nothing over and over. A wrap-up that ended while the
        # tick ran is due now; a millisecond late rather than early otherwise, since a
        # timer that fires before the wrap-up ends finds the agent still busy.
        due = [(p.next_ready_at - now).total_seconds() + 0.001 for name, p in self.paces.items()
               if p.next_ready_at is not None and name in self._measured]
        return max(0.0, min([interval_s, *due]))

    async def run(self, interval_s: float = 1.0, min_gap_s: float = 0.02) -> None:
        """The loop. A tick that fails is logged and the next one tries again; the
        supervisor around this loop is the last resort.

        Woken by terminal callbacks and by the end of the first wrap-up. Callbacks wake
        it up to thousands of times a second, so ticks start at least ``min_gap_s``
        apart; a wake after a quiet spell starts one at once."""
        while self.running:
            last = anyio.current_time()
            try:
                await self.tick()
            except Exception as e:  # an ExceptionGroup from the tick's task group included
                if supervisor.only(e, DB_DOWN):
                    log.warning("dispatch tick failed: database unreachable; retrying",
                                extra={"error": str(e)})
                else:
                    log.exception("dispatch tick failed; retrying")
                await anyio.sleep(interval_s)  # not woken early: callbacks would spin it
            with anyio.move_on_after(self.next_due_s(interval_s)):
                await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.sleep(max(0.0, last + min_gap_s - anyio.current_time()))

