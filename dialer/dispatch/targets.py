"""Pausing and resuming a target — one way, for the API and the console alike."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from dialer.store.queries import Q


async def set_paused(pool: asyncpg.Pool, name: str, paused: bool, by: str, now: datetime) -> None:
    """Under the target's dispatch lock: a fill in progress finishes first, and none starts
    after this commits without seeing the pause (chunks recorded before it are taken out by
    the re-check at send time)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.dispatch_lock_target, name)
        await conn.execute(Q.target_pause, name, paused, by if paused else None, now)
