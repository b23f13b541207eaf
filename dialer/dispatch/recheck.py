"""The re-check just before a send (SPEC §5).

A recorded chunk may wait — a ``Retry-After``, a backoff, an open breaker, a slow
provider. Just before each send its rows are looked at again: a number now on the DNC
list or a cancelled batch ends ``cancelled``; a paused target, calling hours, a holiday
or a cap put the row back to waiting. Each row taken out gets an event naming the rule;
the request is rewritten without them, and a chunk left empty is not sent (``withdrawn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from dialer.config import Settings
from dialer.dispatch import chunker, compliance, windows
from dialer.lifecycle import next_number
from dialer.lifecycle.moves import end_calls, withdraw
from dialer.lifecycle.observe import Ended
from dialer.lifecycle.states import State
from dialer.store.queries import Q

if TYPE_CHECKING:
    from dialer.dispatch.outbox import Claimed

# A chunk recorded this recently was checked against calling hours, holidays and caps
# at its claim; only what can change in an instant (DNC, cancel, pause) is looked at.
FRESH = timedelta(seconds=2)


@dataclass
class Checked:
    chunk: Claimed | None  # None: nothing left to send
    ended: list[Ended] = field(default_factory=list)
    removed: int = 0


async def recheck(conn: asyncpg.Connection, settings: Settings, rules: compliance.Rules,
                  c: Claimed, now: datetime) -> Checked:
    """Runs in the caller's transaction; the chunk is ``sending`` and claimed by us."""
    if await conn.fetchval(Q.chunk_lock, c.id) != "sending":
        return Checked(None)  # a callback proved it taken meanwhile, or the orphan check took it
    rows = await conn.fetch(Q.chunk_recheck_rows, c.id, now)
    t = settings.targets.get(c.target)
    state = await conn.fetchrow(Q.target_state_get, c.target)
    paused = bool(state is not None and state["paused"])
    waited = c.attempts > 1 or (c.created_at is not None and now - c.created_at > FRESH)
    gone: set[int] = set()  # moved on since (a callback, a proof of life): not ours to send
    dnc: list[asyncpg.Record] = []
    cancelled: list[asyncpg.Record] = []
    expired: list[tuple[asyncpg.Record, dict[str, Any]]] = []
    exp = await windows.expiries(conn, t, rows) if t is not None else {}
    gate = windows.gate(t, now) if t is not None else None
    holds: list[tuple[asyncpg.Record, datetime | None, dict[str, Any]]] = []
    keep: list[asyncpg.Record] = []
    for r in rows:
        if r["state"] != State.SUBMITTING:
            gone.add(r["id"])
        elif r["on_dnc"]:
            dnc.append(r)
        elif r["batch_state"] == "cancelled":
            cancelled.append(r)
        elif (e := exp.get(r["id"])) is not None and e.at <= now:
            expired.append((r, windows.expired_detail(e, t)))
        elif gate is not None and gate.until is None:
            expired.append((r, {"rule": gate.rule, **gate.detail}))
        elif gate is not None and gate.until is not None:
            gh = windows.clamp(compliance.Hold(gate.until, gate.rule, gate.detail), exp.get(r["id"]))
            holds.append((r, gh.until, {"rule": gh.rule, **gh.detail, "until": gh.until.isoformat()}))
        elif paused or t is None:
            # until an operator resumes it (or the guard does): no time to name (SPEC §9)
            holds.append((r, None, {"rule": "paused", "reason": "target is paused", "until": None,
                                    "until_what": "the target is resumed"}))
        elif waited and (h := rules.check(c.target, t, r["e164"], r["timezone"], r["fields"], now)):
            h = windows.clamp(h, exp.get(r["id"]))  # a hold past the lead's expiry: until then
            holds.append((r, h.until, {"rule": h.rule, **h.detail, "until": h.until.isoformat()}))
        else:
            keep.append(r)
    if waited and rules.caps and keep:
        over = await compliance.cap_holds(conn, rules.caps, [r["e164"] for r in keep], now,
                                          exclude=[r["id"] for r in keep])
        if over:
            still = []
            for r in keep:
                h = over.get(r["e164"])
                if h is None:
                    still.append(r)
                else:
                    h = windows.clamp(h, exp.get(r["id"]))
                    holds.append((r, h.until, {"rule": h.rule, **h.detail, "until": h.until.isoformat()}))
            keep = still
    taken_out = ([r["id"] for r in dnc + cancelled] + [r["id"] for r, _, _ in holds]
                 + [r["id"] for r, _ in expired])
    if not taken_out and not gone:
        return Checked(c)
    out = Checked(None, removed=len(taken_out))
    why = {"chunk_id": c.id, "at": "send"}
    out.ended += await end_calls(conn, [r["id"] for r in dnc], State.SUBMITTING, State.CANCELLED,
                                 "cancelled", now, {**why, "rule": "dnc",
                                                    "reason": "number is on the do-not-call list"},
                                 post=False, not_sent=True)
    # a lead with several numbers goes on, as when the list cancels a waiting attempt
    await next_number.after_dnc_at_send(conn, [r["id"] for r in dnc], settings.targets, now)
    out.ended += await end_calls(conn, [r["id"] for r in cancelled], State.SUBMITTING, State.CANCELLED,
                                 "cancelled", now, {**why, "rule": "batch_cancelled",
                                                    "reason": "the batch was cancelled"}, not_sent=True)
    for r, detail in expired:
        out.ended += await end_calls(conn, [r["id"]], State.SUBMITTING, State.EXPIRED, "expired", now,
                                     {**why, **detail}, not_sent=True)
    await withdraw(conn, [(r["id"], until, {**why, **detail}) for r, until, detail in holds], now)
    if not keep:
        await conn.execute(Q.chunk_withdraw, c.id, "every row was taken out just before sending", now)
        return out
    ref_field = t.ref_field if t is not None else 10
    request, n = chunker.without(c.request, ref_field, set(taken_out) | gone)
    await conn.execute(Q.chunk_request_update, c.id, request, n)
    out.chunk = replace(c, request=request, rows=n)
    return out
