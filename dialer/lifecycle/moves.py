"""Named moves of calls and chunks, each one statement that checks and audits itself.

Lock order, everywhere: a chunk before its calls, calls in id order. The callback batch
(calls in id order), the settle of a send (chunk, then calls) and the proof of life
(chunk, then calls) follow it, so none of them can deadlock another.

Each function runs in the caller's transaction and returns what ended; the caller tells
``observe.ended`` once it committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from dialer.lifecycle.observe import Ended, from_rows
from dialer.lifecycle.states import TERMINAL, WAITING, State, sql_list
from dialer.store.queries import Q


async def record_events(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    from_state: str | Sequence[str],
    to_state: str,
    kind: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
) -> None:
    """The audit trail of a move of many calls (one row each)."""
    if not ids:
        return
    froms = [from_state] * len(ids) if isinstance(from_state, str) else list(from_state)
    await conn.execute(Q.events_bulk, list(ids), now, kind, to_state, payload, froms)


async def chunk_taken(
    conn: asyncpg.Connection,
    chunk_id: int,
    now: datetime,
    why: str,
    status: int | None = None,
    response: Any = None,
) -> int:
    """The provider took the chunk (its answer said so, or a callback proved it): the chunk
    is ``sent`` whatever state it was in, and its calls still waiting on the outcome move to
    ``queued``. Returns the calls moved; 0 when the chunk was already sent."""
    row = await conn.fetchrow(Q.chunk_taken, chunk_id, now, status, response, why)
    return int(row["calls"]) if row is not None else 0


async def chunk_calls(
    conn: asyncpg.Connection,
    chunk_id: int,
    src: State,
    dst: State,
    kind: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
) -> list[Ended]:
    """Every call of the chunk still in ``src`` moves to ``dst``; returns what ended."""
    rows = await conn.fetch(Q.chunk_calls_moved, chunk_id, src, dst, now, dst in TERMINAL)
    await record_events(conn, [r["id"] for r in rows], src, dst, kind, now, payload)
    return from_rows(rows, dst.value) if dst in TERMINAL else []


async def end_calls(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    from_states: str | Sequence[str],
    dst: State,
    kind: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
) -> list[Ended]:
    """End these (already locked) calls in ``dst``, audited; returns what ended."""
    assert dst in TERMINAL
    if not ids:
        return []
    rows = await conn.fetch(Q.calls_end, list(ids), dst, now, None)
    await record_events(conn, ids, from_states, dst, kind, now, payload)
    return from_rows(rows, dst.value)


async def cancel_batch(conn: asyncpg.Connection, batch_id: object, now: datetime, by: str) -> list[Ended]:
    """Cancel a batch: its calls not yet sent end ``cancelled`` (those already recorded in a
    chunk are taken out by the re-check at send time; later attempts by completion)."""
    rows = await conn.fetch(Q.batch_cancel_calls, batch_id, now, sql_list(WAITING))
    await conn.execute(Q.batch_mark_cancelled, batch_id, now)
    await record_events(conn, [r["id"] for r in rows], [r["state"] for r in rows], State.CANCELLED,
                        "cancelled", now, {"by": by, "rule": "batch_cancelled"})
    return from_rows(rows, State.CANCELLED.value)
