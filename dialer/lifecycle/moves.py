"""Named moves of calls and chunks, each one statement that checks and audits itself.

Lock order, everywhere: a chunk before its calls, calls in id order. The callback batch
(calls in id order), the settle of a send (chunk, then calls) and the proof of life
(chunk, then calls) follow it, so none of them can deadlock another. Likewise a batch's
row before its calls: a cancel, and an intake's finalise or failure of the batch.

Each function runs in the caller's transaction and returns what ended; the caller tells
``observe.ended`` once it committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from dialer.lifecycle import holds
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


async def release_due(conn: asyncpg.Connection, target: str, now: datetime, limit: int) -> int:
    """Up to ``limit`` of the target's waiting calls whose hold or wait ended by ``now`` back
    into the dispatch order (not_before cleared: no state move, no event); returns how many."""
    status = await conn.execute(Q.dispatch_release_due, target, now, limit)
    return int(status.rsplit(" ", 1)[-1])  # UPDATE n


async def hold(
    conn: asyncpg.Connection,
    items: Sequence[tuple[int, str, datetime, dict[str, Any]]],
    now: datetime,
) -> None:
    """Waiting calls a rule holds back (calling hours, holiday, cap): ``scheduled`` until
    the hold clears, each with an event naming the rule — (id, from state, until, detail)."""
    if not items:
        return
    ids = [i[0] for i in items]
    await conn.execute(Q.calls_hold, ids, [i[2] for i in items], now, [holds.of_detail(i[3]) for i in items])
    await conn.execute(Q.events_each, ids, now, "hold", State.SCHEDULED, [i[1] for i in items],
                       [i[3] for i in items])


async def withdraw(
    conn: asyncpg.Connection,
    items: Sequence[tuple[int, datetime | None, dict[str, Any]]],
    now: datetime,
) -> None:
    """Calls taken out of a chunk just before it was sent: back to waiting — ``scheduled``
    until the hold clears, or ``pending`` (no until: a paused target) — each with an event."""
    if not items:
        return
    ids = [i[0] for i in items]
    await conn.execute(Q.calls_withdraw, ids, [i[1] for i in items], now,
                       [holds.of_detail(i[2]) if i[1] is not None else None for i in items])
    for dst in (State.PENDING, State.SCHEDULED):
        part = [i for i in items if (i[1] is None) == (dst is State.PENDING)]
        if part:
            await conn.execute(Q.events_each, [i[0] for i in part], now, "hold", dst,
                               [State.SUBMITTING.value] * len(part), [i[2] for i in part])


async def submit(conn: asyncpg.Connection, ids: Sequence[int], from_states: Sequence[str], chunk_id: int,
                 now: datetime, offered_to: Sequence[str | None] | None = None) -> None:
    """Waiting calls recorded in a chunk: ``submitting`` (an attempt, for the caps, from now),
    each directed to the agent in ``offered_to`` when the request names one per call."""
    if offered_to is None:
        await conn.execute(Q.calls_submitting, list(ids), chunk_id, now)
    else:
        await conn.execute(Q.calls_submitting_to, list(ids), chunk_id, now, list(offered_to))
    await record_events(conn, ids, from_states, State.SUBMITTING, "chunked", now, {"chunk_id": chunk_id})


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
    if dst not in TERMINAL:
        return []
    await post_results(conn, rows, now)
    return from_rows(rows, dst.value)


async def post_results(conn: asyncpg.Connection, rows: Sequence[Any], now: datetime,
                       several_dnc: bool = True, limit_s: float | None = None) -> None:
    """Result webhooks (one per ended call, SPEC §6) for calls a move ended without a
    provider's callback (that path posts its own): one statement, in the caller's
    transaction, skipped at once when none of their batches has a ``result_webhook_url``.
    ``rows`` carry ``id`` and ``batch_id``; ``several_dnc=False`` leaves out DNC-cancelled
    attempts of several-number leads (``next_number`` posts them once it chose the next).
    ``limit_s``: the statement's (a DNC import's ``bulk_limits``), else the pool's."""
    if await _any_webhook(conn, rows, limit_s):
        await conn.execute(Q.webhook_enqueue_ended, [r["id"] for r in rows], now, sql_list(TERMINAL),
                           several_dnc, timeout=limit_s)


async def _any_webhook(conn: asyncpg.Connection, rows: Sequence[Any], limit_s: float | None = None) -> bool:
    """Whether any of these rows' batches has a ``result_webhook_url`` (one cheap query)."""
    if not rows:
        return False
    return bool(await conn.fetchval(Q.batches_with_webhook, list({r["batch_id"] for r in rows}),
                                    timeout=limit_s))


async def end_calls(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    from_states: str | Sequence[str],
    dst: State,
    kind: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
    *,
    post: bool = True,
    not_sent: bool = False,
) -> list[Ended]:
    """End these (already locked) calls in ``dst``, audited; returns what ended. ``post``
    False: the caller posts their result webhooks (once it knows what follows them).
    ``not_sent``: taken out of their chunk just before it went, so no attempt."""
    assert dst in TERMINAL
    if not ids:
        return []
    if not_sent:
        await conn.execute(Q.calls_not_sent, list(ids))
    rows = await conn.fetch(Q.calls_end, list(ids), dst, now, None)
    await record_events(conn, ids, from_states, dst, kind, now, payload)
    if post:
        await post_results(conn, rows, now)
    return from_rows(rows, dst.value)


async def cancel_batch(conn: asyncpg.Connection, batch_id: object, now: datetime, by: str) -> list[Ended]:
    """Cancel a batch: its calls not yet sent end ``cancelled`` (those already recorded in a
    chunk are taken out by the re-check at send time; later attempts by completion).

    A batch still receiving rows is cancelled too: marked first, so no chunk of it commits
    after the rows read are cancelled, and its ingest, finding it so, stops there and files
    the file as cancelled (``intake.files``); its counts are the rows read by then."""
    was = await conn.fetchval(Q.batch_mark_cancelled, batch_id)
    rows = await conn.fetch(Q.batch_cancel_calls, batch_id, now, sql_list(WAITING))
    if was == "receiving":
        await conn.execute(Q.batch_cancelled_counts, batch_id)
    await record_events(conn, [r["id"] for r in rows], [r["state"] for r in rows], State.CANCELLED,
                        "cancelled", now, {"by": by, "rule": "batch_cancelled"})
    await post_results(conn, rows, now)
    return from_rows(rows, State.CANCELLED.value)


async def cancel_for_dnc(conn: asyncpg.Connection, numbers: Sequence[str], now: datetime,
                         detail: dict[str, Any]) -> list[Ended]:
    """Numbers put on the do-not-call list: their calls not yet sent end ``cancelled``, in
    every target (calls already recorded in a chunk are taken out at send time)."""
    if not numbers:
        return []
    rows = await conn.fetch(Q.dnc_cancel_numbers, list(numbers), now)
    await record_events(conn, [r["id"] for r in rows], [r["state"] for r in rows], State.CANCELLED,
                        "cancelled", now, detail)
    await post_results(conn, rows, now, several_dnc=False)
    return from_rows(rows, State.CANCELLED.value)


async def cancel_for_dnc_import(conn: asyncpg.Connection, now: datetime,
                                limit_s: float | None = None) -> list[Ended]:
    """The same for every number of a DNC import (its temporary table), in one statement.
    ``limit_s``: each statement's (they grow with the file: the import's ``bulk_limits``)."""
    rows = await conn.fetch(Q.dnc_import_cancel, now, timeout=limit_s)
    if await _any_webhook(conn, rows, limit_s):  # rows are per batch here: the calls' ids only when needed
        await post_results(conn, await conn.fetch(Q.dnc_import_cancelled, now, False, timeout=limit_s), now,
                           several_dnc=False, limit_s=limit_s)
    return [Ended(r["target"], State.CANCELLED.value, r["batch_id"], r["n"]) for r in rows]


async def requeue(conn: asyncpg.Connection, ids: Sequence[int], now: datetime, reason: str) -> None:
    """Uncertain calls no callback proved: back to ``pending`` once, remembering their chunk."""
    if ids:
        await conn.execute(Q.calls_requeue, list(ids), now)
        await record_events(conn, ids, State.UNCERTAIN, State.PENDING, "requeued", now, {"reason": reason})


async def new_attempt(conn: asyncpg.Connection, call_id: int, after: State, due: datetime,
                      now: datetime, number: str | None = None) -> asyncpg.Record | None:
    """The next attempt of a lead (a re-dial rule), waiting as ``retry_wait`` until ``due``
    (to ``number``: a lead's next number, else the same); None for a cancelled batch."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.recycle_insert, call_id, after.value, due, now, number)
    return row


async def new_callback(conn: asyncpg.Connection, call_id: int, due: datetime,
                       now: datetime) -> asyncpg.Record | None:
    """An agent-scheduled callback's attempt of the call's lead (reason ``callback``, not a
    re-dial), waiting as ``retry_wait`` until ``due``; None for a cancelled batch."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.callback_insert, call_id, due, now)
    return row


async def apply_callback(conn: asyncpg.Connection, call_id: int, src: State, dst: State, now: datetime,
                         agent: str | None, outcome: str | None, provider_call_id: str | None,
                         dials: int | None = None) -> None:
    """One callback's move of one (locked) call; the caller checked ``can_move``. ``dials``:
    how often the provider dialed it, when its terminal callback says more than once."""
    await conn.execute(Q.call_move, call_id, dst.value, now, agent, outcome, dst in TERMINAL, None,
                       provider_call_id, dials)


async def classify_intake(conn: asyncpg.Connection, batch_id: object, target: str, window_start: datetime,
                          now: datetime, collapse: bool, dnc: bool,
                          limit_s: float | None = None) -> tuple[int, int]:
    """Rows of a batch still receiving: duplicates (in the batch, then against the target's
    live or recent calls) and numbers on the DNC list. Returns (duplicates, dnc)."""
    dup = 0
    if collapse:
        dup += _affected(await conn.execute(Q.finalise_collapse_in_batch, batch_id, timeout=limit_s))
    dup += _affected(await conn.execute(Q.finalise_dedupe_target, batch_id, target, window_start,
                                        timeout=limit_s))
    listed = _affected(await conn.execute(Q.finalise_dnc, batch_id, now, timeout=limit_s)) if dnc else 0
    return dup, listed


async def settle_numbers(conn: asyncpg.Connection,
                         kept: Sequence[tuple[int, str, str, str | None, dict[str, Any]]],
                         rejected: Sequence[tuple[int, str, str, dict[str, Any]]],
                         limit_s: float | None = None) -> None:
    """Finalise of several-number leads: ``kept`` lost some numbers (id, first number, its
    raw text, array literal of all or None, notes); ``rejected`` lost them all (id,
    duplicate|dnc, reason, notes)."""
    if kept:
        await conn.execute(Q.numbers_settle, [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept],
                           [k[3] for k in kept], [k[4] for k in kept], timeout=limit_s)
    if rejected:
        await conn.execute(Q.numbers_reject, [r[0] for r in rejected], [r[1] for r in rejected],
                           [r[2] for r in rejected], [r[3] for r in rejected], timeout=limit_s)


async def drop_batch_calls(conn: asyncpg.Connection, batch_id: object, limit_s: float | None = None) -> None:
    """The rows of a batch whose input turned out unreadable: nothing of it is dialed."""
    await conn.execute(Q.batch_drop_calls, batch_id, timeout=limit_s)


def _affected(status: str) -> int:
    """Rows a command touched, from its status tag (``UPDATE 12``)."""
    return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0
