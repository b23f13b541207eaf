"""Apply one provider callback to its call: forward-only, every event audited.

A duplicate or late callback is recorded (``applied = false``) and acknowledged, but
never moves a call backwards and never counts twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dialer.intake import phones
from dialer.lifecycle import moves
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.payload import CallbackData
from dialer.lifecycle.states import TERMINAL, State, can_move
from dialer.store.queries import Q


@dataclass(slots=True)
class Applied:
    result: str  # applied | duplicate | unmatched
    call_id: int | None = None
    from_state: str | None = None
    to_state: str | None = None
    target: str | None = None
    terminal: bool = False
    submitted_at: datetime | None = None
    agent: str | None = None
    disposition: str | None = None
    batch_id: object = None
    chunk_state: str | None = None  # the matched call's chunk, as read: not 'sent' → prove it
    effects: object = None  # dialer.lifecycle.ended.EndEffects after a terminal state


def target_state(kind: str, cb: CallbackData, disp: Dispositions) -> State:
    ev = cb.event or ""  # read without case, '_' or '-' (payload._key)
    if kind == "terminal" or ev in ("terminated", "callterminated", "ended", "terminal"):
        return disp.state_for(cb.disposition)
    if ev in ("customeranswered", "connected", "customerconnected"):
        return State.CONNECTED
    return State.ASSIGNED  # agent_assigned, agent_answered, or a bare connect callback


MAX_DIALS = 100


def provider_dials(cb: CallbackData) -> int | None:
    """The provider's dials of a call past its first (Ryng's maxRetries), from the terminal
    callback's ``attempts``; None when once (or not said). Capped: a garbled count must not
    hold a number for ever."""
    if cb.attempts is None or cb.attempts <= 1:
        return None
    return min(cb.attempts, MAX_DIALS)


def _numbers(n: str, region: str | None) -> list[str]:
    """The spellings of ``n`` a call's E.164 may be: as sent, ``+`` and its digits, its
    digits alone, and as intake normalised it in ``region`` (a national spelling such as
    ``4155550107`` has no country code to be found by the others)."""
    digits = "".join(ch for ch in n if ch.isdigit())
    out = {n, "+" + digits, digits} if digits else {n}
    if region is not None:
        e164, _ = phones.normalise(n, region)
        if e164 is not None:
            out.add(e164)
    return list(out)


async def apply(
    conn: asyncpg.Connection,
    chunk_id: int,
    kind: str,
    cb: CallbackData,
    disp: Dispositions,
    now: datetime,
    regions: Mapping[str, str] | None = None,
) -> Applied:
    """Runs in the caller's transaction. ``regions``: each target's ``default_region``, to
    read a number with no reference to match as intake read the lead's."""
    call_id: int | None = None
    for ref in cb.refs:
        call_id = ref
        break
    row = await conn.fetchrow(Q.call_for_update, call_id) if call_id is not None else None
    if row is not None and row["chunk_id"] != chunk_id and chunk_id not in (row["prev_chunks"] or ()):
        # a reference from another chunk under this chunk's token: don't trust it
        row = None
    if row is None and cb.number:
        region = None
        if regions and (target := await conn.fetchval(Q.chunk_target, chunk_id)) is not None:
            region = regions.get(target)
        cid = await conn.fetchval(Q.call_by_chunk_number, chunk_id, _numbers(cb.number, region))
        if cid is not None:
            row = await conn.fetchrow(Q.call_for_update, cid)
    event_kind = f"callback_{kind}"
    if row is None:
        await conn.execute(Q.event_insert, None, now, event_kind, None, None, False,
                           {"chunk_id": chunk_id, "body": cb.raw, "note": "no matching call"})
        return Applied("unmatched")
    dst = target_state(kind, cb, disp)
    src = State(row["state"])
    payload = {"chunk_id": chunk_id, "body": cb.raw}
    chunk_state = await conn.fetchval(Q.chunk_state, chunk_id)
    if not can_move(src, dst):
        await conn.execute(Q.event_insert, row["id"], now, event_kind, src.value, dst.value, False, payload)
        return Applied("duplicate", row["id"], src.value, dst.value, row["target"],
                       chunk_state=chunk_state)
    terminal = dst in TERMINAL
    outcome = (cb.disposition or "unknown") if terminal else None
    # ended_at: our clock, not the provider's (no skew in wrap-up)
    dials = provider_dials(cb) if terminal else None
    await moves.apply_callback(conn, row["id"], src, dst, now, cb.agent, outcome, cb.call_id, dials)
    await conn.execute(Q.event_insert, row["id"], now, event_kind, src.value, dst.value, True, payload)
    return Applied("applied", row["id"], src.value, dst.value, row["target"], terminal,
                   agent=cb.agent or row["agent"], disposition=cb.disposition, batch_id=row["batch_id"],
                   chunk_state=chunk_state)


ALLOWED_PAIRS = [f"{a.value}>{b.value}" for a in State for b in State if can_move(a, b)]
