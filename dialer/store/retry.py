"""Which database errors are passing, and retrying where they happen.

Two kinds: the database is *away* (connection refused or broken, shutting down, too many
connections, a pool with no free connection in time, a server that takes no writes) —
callers spool, wait, or let their loop's supervisor back off; and a transaction lost a
*race* (deadlock, serialization failure) — run it again at once, a few times, with jitter.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import asyncpg

log = logging.getLogger(__name__)

T = TypeVar("T")

# "The database is not there right now", not "this statement is bad".
DB_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,  # the server's (or a role's) connection limit is reached
    asyncpg.InsufficientResourcesError,  # the server's disk or memory is full, for now
    asyncpg.InternalClientError,  # a connection broken mid-operation by a restart
    # a standby (or a demoted primary): the DSN reached a server that is not the primary
    # right now, mid-failover. Never a bad statement: the daemon opens no read-only
    # transaction of its own. It waits for the promotion like any other outage.
    asyncpg.ReadOnlySQLTransactionError,
)

# A transaction that lost a race with another: running it again succeeds.
RACE: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


async def transient(fn: Callable[[], Awaitable[T]], what: str, attempts: int = 5) -> T:
    """Run ``fn`` (one whole transaction) again when it lost a race."""
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except RACE as e:
            if attempt == attempts:
                raise
            log.warning("transaction lost a race; running it again",
                        extra={"what": what, "error": type(e).__name__, "attempt": attempt})
            await anyio.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter
    raise AssertionError("unreachable")
