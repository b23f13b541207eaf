"""Logged-out console sessions, kept in PostgreSQL.

The session cookie is signed and carries no server state (``ui.session``), so a logout
must be written where every instance reads it: behind a load balancer, or after a
restart, a logged-out cookie must not work again. ``record`` writes the session's id
with its expiry (and deletes the rows of sessions expired since: the table holds live
sessions only); ``revoked`` is the one primary-key lookup an authenticated console
request makes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from dialer.store.queries import Q
from dialer.ui.session import Session


async def record(pool: asyncpg.Pool, s: Session, now: datetime) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.ui_session_revoke, s.sid, datetime.fromtimestamp(s.expires, UTC))
        await conn.execute(Q.ui_sessions_revoked_prune, now)


async def revoked(pool: asyncpg.Pool, sid: str) -> bool:
    return bool(await pool.fetchval(Q.ui_session_revoked, sid))
