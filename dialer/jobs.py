"""Periodic jobs, declared as data and run by apscheduler.

Singleton jobs take a transaction-scoped advisory lock, so with several daemon
instances on one database each runs once at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from dialer import supervisor
from dialer.clock import Clock
from dialer.config import Settings
from dialer.dispatch import outbox
from dialer.lifecycle import observe
from dialer.lifecycle.moves import end_calls
from dialer.lifecycle.observe import Ended
from dialer.lifecycle.states import State
from dialer.store.queries import Q
from dialer.store.retry import transient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    every_s: float
    run: Callable[[], Awaitable[object]]
    singleton: bool = True


async def singleton(
    pool: asyncpg.Pool, name: str, fn: Callable[[asyncpg.Connection], Awaitable[object]]
) -> object:
    """Run ``fn`` in a transaction only if no other instance is running this job now
    (again, if it lost a race with another writer)."""
    async def once() -> object:
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(Q.singleton_try, name):
                return None
            return await fn(conn)

    return await transient(once, f"job {name}")


class Jobs:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, clock: Clock, instance_id: str) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.instance_id = instance_id
        self.scheduler = AsyncIOScheduler()
        self.extra: list[Job] = []

    async def heartbeat(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(Q.instance_heartbeat, self.instance_id, self.clock.now(),
                               self.settings.http_listen)

    async def orphans(self) -> object:
        async def go(conn: asyncpg.Connection) -> object:
            s = self.settings
            # no request takes longer than its timeout: a claim older than that (plus slack
            # for recording its outcome) is the sender's loss, whether or not it still beats
            ids = await outbox.orphaned_to_uncertain(conn, self.clock.now(), s.instance_stale_s,
                                                     claim_max_s=2 * s.ryng_timeout_s + 120)
            if ids:
                log.warning("chunks left mid-send by a dead instance are now uncertain",
                            extra={"chunks": ids})
            return ids

        return await singleton(self.pool, "orphans", go)

    async def uncertain(self) -> object:
        async def go(conn: asyncpg.Connection) -> object:
            return await outbox.requeue_uncertain(conn, self.clock.now(), self.settings.uncertain_after_min)

        out = await singleton(self.pool, "uncertain", go)
        if isinstance(out, tuple):
            observe.ended(out[2])
        return out

    async def reaper(self) -> object:
        async def go(conn: asyncpg.Connection) -> list[Ended]:
            now = self.clock.now()
            rows = await conn.fetch(Q.calls_stale, now - timedelta(hours=self.settings.stale_after_h))
            return await end_calls(conn, [r["id"] for r in rows], [r["state"] for r in rows],
                                   State.EXPIRED, "reaped", now,
                                   {"reason": f"no callback for {self.settings.stale_after_h:g} h"})

        out = await singleton(self.pool, "reaper", go)
        if isinstance(out, list):
            observe.ended(out)
        return out

    def jobs(self) -> list[Job]:
        return [
            # several beats per instance_stale_s: a live instance never looks dead between two
            # (a small stale time — a test, a fast failover — would otherwise orphan its sends)
            Job("heartbeat", max(0.5, min(5.0, self.settings.instance_stale_s / 3)), self.heartbeat,
                singleton=False),
            # often enough that the configured deadlines are honoured, not rounded up
            Job("orphans", max(1.0, min(10.0, self.settings.instance_stale_s / 2)), self.orphans),
            Job("uncertain", max(1.0, min(60.0, self.settings.uncertain_after_min * 30)), self.uncertain),
            # a short stale_after_h (tests, demos) is honoured, not rounded up to 5 minutes
            Job("reaper", max(1.0, min(300.0, self.settings.stale_after_h * 3600 / 10)), self.reaper),
            *self.extra,
        ]

    def start(self) -> None:
        for job in self.jobs():
            self.scheduler.add_job(
                guarded(job), "interval", seconds=job.every_s, id=job.name,
                max_instances=1, coalesce=True, misfire_grace_time=max(1, int(job.every_s)),
            )
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)


def guarded(job: Job) -> Callable[[], Awaitable[None]]:
    """A failed run is logged and counted; the next interval runs the job again."""
    async def run() -> None:
        try:
            await job.run()
        except asyncio.CancelledError:
            # the scheduler cancels a run still going when the daemon stops: its transaction
            # rolls back and the next start runs the job again; not an error (apscheduler
            # would log it as one if it came through)
            log.info("job cancelled (shutting down)", extra={"job": job.name})
        except Exception as e:
            supervisor.failed(f"job_{job.name}", e)

    run.__name__ = f"job_{job.name}"
    return run
