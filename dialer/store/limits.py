"""Limits for statements whose work grows with an input: a lead batch's finalise and the drop
of a failed batch's rows (``intake/batches.py``), a do-not-call import's merge into the list
and cancel of the calls it lists (``intake/dnc.py``).

Every call of the pool is held to asyncpg's flat ``command_timeout`` (60 s, client side),
which would refuse a big enough input on every retry. ``bulk_limits`` gives the rest of the
caller's transaction time in proportion to the input, on the server (the error then says
which limit ran out), and returns the matching client-side ``timeout`` each of its calls
must pass; a wait for a lock still ends in bounded time, whatever the input's size.
"""

from __future__ import annotations

import asyncpg

from dialer.store.database import COMMAND_TIMEOUT_S
from dialer.store.queries import Q

# A statement over a whole input may run BULK_BASE_S plus BULK_ROW_S per row of it. Under the
# pool's flat limit a big lead file with many duplicates (its marking grows with the batch
# and the target's history: 6.5 s for 156,000 duplicates of a 600,000-row file, the 4th into
# its target) would fail its finalise on every retry, never dialed nor reported, and so would
# a national registry's do-not-call file of millions of numbers. The dedupe costs about 12 µs
# a row (bench/plans.py, over 10,000,000 calls of history), a DNC import's merge and cancel
# about 11 µs a number (200,000 numbers cancelling 50,000 calls: 2.2 s on the 2-core test
# machine): 1 ms (34 min for 2,000,000 rows) leaves room for a busy server and still ends a
# runaway plan. A wait for a lock does not grow with the input: it ends after half of
# BULK_BASE_S, well within the statement's own limit, so the error says it was the lock.
# Both are read at each call: tests lower them, in-process or in a CLI child before its main.
BULK_BASE_S = COMMAND_TIMEOUT_S
BULK_ROW_S = 0.001
# The client's own limit on such a call is longer by this: the server's limit ends the
# statement (with an error that says which limit ran out), the client's only a call whose
# answer never comes (a lost connection)
_ANSWER_S = 30.0


def statement_limit_s(rows: int) -> float:
    """How long one statement over an input of ``rows`` may run (``bulk_limits``)."""
    return BULK_BASE_S + max(0, rows) * BULK_ROW_S


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))  # 0 would be no limit at all


async def bulk_limits(conn: asyncpg.Connection, rows: int) -> float:
    """For the rest of the caller's transaction: each statement may run ``BULK_BASE_S`` plus
    ``BULK_ROW_S`` per one of the input's ``rows``, a lock be waited for half ``BULK_BASE_S``.
    Returns the client-side ``timeout`` its calls must pass (else the pool's command timeout
    ends them)."""
    limit = statement_limit_s(rows)
    await conn.execute(Q.bulk_limits, _ms(limit), _ms(BULK_BASE_S / 2))
    return limit + _ANSWER_S
