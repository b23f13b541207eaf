"""The outbox: chunks are recorded before they are sent, and never resent blindly.

``recorded`` → (claimed, committed) ``sending`` → HTTP → ``sent`` | ``recorded`` again
(retry later: the provider certainly did not take it) | ``failed`` | ``rejected`` |
``uncertain`` (it may have been taken: calls wait for a callback to prove them live).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dialer.config import Settings, Target
from dialer.dispatch import chunker, compliance, windows
from dialer.dispatch.pacing import Pace
from dialer.lifecycle import moves
from dialer.lifecycle.moves import chunk_calls, chunk_taken, end_calls, record_events
from dialer.lifecycle.observe import Ended
from dialer.lifecycle.states import State
from dialer.signing import make_token
from dialer.store.queries import Q

log = logging.getLogger(__name__)

__all__ = ["Claimed", "Fill", "record_chunk", "record_events"]


@dataclass(slots=True)
class Claimed:
    id: int
    target: str
    token: str
    request: dict[str, Any]
    kind: str
    attempts: int
    rows: int
    created_at: datetime | None = None


async def slots_for(conn: asyncpg.Connection, target: str, t: Target, names: set[str]) -> dict[str, int]:
    existing = {r["name"]: r["slot"] for r in await conn.fetch(Q.fields_for_target, target)}
    new = chunker.assign_slots(existing, sorted(names), t.ref_field)
    if new:
        await conn.execute(Q.fields_add, target, list(new), list(new.values()))
        existing = {r["name"]: r["slot"] for r in await conn.fetch(Q.fields_for_target, target)}
    left_out = sorted(n for n in names - set(existing) if (target, n) not in _NO_SLOT)
    if left_out:  # Ryng has customField slots only so far: said once per field, not per chunk
        if len(_NO_SLOT) > 10_000:  # field names come from leads: bounded, at worst said again
            _NO_SLOT.clear()
        _NO_SLOT.update((target, n) for n in left_out)
        log.warning("custom fields not sent to Ryng: the target's customField slots are all taken",
                    extra={"target": target, "fields": left_out[:20], "slots": chunker.MAX_SLOTS})
    return existing


_NO_SLOT: set[tuple[str, str]] = set()  # (target, field) already warned about
RELEASE_MAX = 5_000  # due calls moved back into the dispatch order per fill
MARGIN_MAX = 5_000  # candidates read past the chunk's size per fill, at most
FULL_WALK_EVERY_S = 5.0  # while a batch is coming in: a fill reads past its rows this often


@dataclass(slots=True)
class Screened:
    """What compliance made of the candidates: sent now, cancelled, capped, or held."""

    take: list[asyncpg.Record] = field(default_factory=list)
    dnc: list[asyncpg.Record] = field(default_factory=list)
    capped: list[tuple[asyncpg.Record, compliance.Hold]] = field(default_factory=list)
    held: list[tuple[asyncpg.Record, compliance.Hold]] = field(default_factory=list)
    expired: list[tuple[asyncpg.Record, dict[str, Any]]] = field(default_factory=list)


@dataclass(slots=True)
class Fill:
    """One fill's look at the queue. Calls set aside (held until later, ended) or released
    (due again) are progress even when none is taken: the next fill reads past them. While
    most of what a fill reads is set aside, ``margin`` (the extra candidates asked for)
    doubles, so a long run of held leads at the queue's head takes a few fills, not one
    per chunk's worth of them."""

    margin: int = 0
    walk_all: bool = True  # may read past the rows of a batch still coming in (see candidates)
    walked_all: bool = False
    asked: int = 0
    looked_at: int = 0
    set_aside: int = 0
    released: int = 0

    def moved(self) -> bool:
        return self.set_aside > 0 or self.released > 0

    def next_margin(self) -> int:
        if self.looked_at and self.set_aside * 2 >= self.looked_at:
            return min(MARGIN_MAX, max(2 * self.asked, 64))
        return 0


@dataclass(slots=True)
class Request:
    chunk_id: int
    token: str
    body: dict[str, Any]
    kind: str
    named_agent: str | None
    offered_to: list[str | None] | None = None  # per row, the agent it is directed to


async def record_chunk(
    conn: asyncpg.Connection,
    settings: Settings,
    secret: bytes,
    name: str,
    pace: Pace,
    now: datetime,
    max_rows: int,
    rules: compliance.Rules | None = None,
    ended: list[Ended] | None = None,
    fill: Fill | None = None,
) -> int:
    """Claim up to ``max_rows`` dispatchable calls into a recorded chunk; returns rows claimed.

    release due → select → compliance → build → record, in the caller's transaction, which
    must hold the target's dispatch lock. Calls ended on the way (DNC, caps) are added to
    ``ended``; ``fill`` (in and out) carries the look-ahead and what was set aside.
    """
    t = settings.targets[name]
    n = min(max_rows, t.chunk_size, pace.free)
    if n <= 0:
        return 0
    fill = fill if fill is not None else Fill()
    fill.released = await moves.release_due(conn, name, now, RELEASE_MAX)
    # a margin for leads held back by calling hours or caps (wider while they fill the
    # queue's head: see Fill); the rest waits for the next chunk
    fill.asked = n + max(20, n // 5, fill.margin)
    cands = await candidates(conn, name, now, fill)
    fill.looked_at = len(cands)
    screened = await screen(conn, rules or compliance.Rules(settings), name, t, cands, n, now)
    fill.set_aside = len(screened.dnc) + len(screened.expired) + len(screened.capped) + len(screened.held)
    done = await apply_screening(conn, screened, now)
    if ended is not None:
        ended.extend(done)
    if not screened.take:
        return 0
    return await record(conn, settings, secret, name, t, pace, screened.take, now)


async def candidates(conn: asyncpg.Connection, name: str, now: datetime, fill: Fill) -> list[asyncpg.Record]:
    """The target's next ``fill.asked`` candidates. While one of its batches is still coming
    in, a fill reads only the calls older than that batch's rows, unless ``fill.walk_all``
    (one fill every FULL_WALK_EVERY_S; ``fill.walked_all`` says it did): fills do not walk
    all of the batch's rows each time, and a call newer than them (a re-dial, a callback, a
    batch that came in meanwhile) waits that long at most, whatever its priority."""
    first_incoming = await conn.fetchval(Q.receiving_first_id, name)
    if first_incoming is not None:
        if not fill.walk_all:
            return await conn.fetch(  # type: ignore[no-any-return]
                Q.dispatch_candidates_older, name, now, fill.asked, first_incoming)
        fill.walked_all = True
    return await conn.fetch(Q.dispatch_candidates, name, now, fill.asked)  # type: ignore[no-any-return]


async def record(conn: asyncpg.Connection, settings: Settings, secret: bytes, name: str, t: Target,
                 pace: Pace, take: list[asyncpg.Record], now: datetime, owner: str | None = None) -> int:
    """The request for ``take`` built and recorded as a chunk, its calls ``submitting``
    (each with the agent it is directed to); returns how many."""
    req = await build(conn, settings, secret, name, t, pace, take, owner=owner)
    await conn.execute(Q.chunk_insert, req.chunk_id, name, req.token, len(take), req.body, req.kind,
                       req.named_agent, now)
    await moves.submit(conn, [c["id"] for c in take], [c["state"] for c in take], req.chunk_id, now,
                       req.offered_to)
    return len(take)


async def screen(conn: asyncpg.Connection, rules: compliance.Rules, name: str, t: Target,
                 cands: list[asyncpg.Record], n: int, now: datetime) -> Screened:
    """DNC, calling hours, holidays and caps over the candidates; at most ``n`` taken,
    one attempt per number per chunk (the caps count them)."""
    out = Screened()
    numbers_taken: set[str] = set()
    # expired leads end, a closed campaign window holds the rest (dispatch/windows.py)
    w = await windows.screen(conn, t, cands, now)
    out.expired, out.held = w.expired, w.held
    for c in w.rest:
        if c["on_dnc"]:  # listed since it was ingested (or since its last attempt)
            out.dnc.append(c)
            continue
        hold = rules.check(name, t, c["e164"], c["timezone"], c["fields"], now)
        if hold is not None:
            out.held.append((c, hold))
        elif len(out.take) < n and c["e164"] not in numbers_taken:
            out.take.append(c)
            numbers_taken.add(c["e164"])
    if rules.caps and out.take:
        over = await compliance.cap_holds(conn, rules.caps, [c["e164"] for c in out.take], now)
        if over:
            keep = []
            for c in out.take:
                h = over.get(c["e164"])
                if h is None:
                    keep.append(c)
                elif c["attempt"] > 1 and c.get("reason") != "callback":
                    out.capped.append((c, h))  # a re-dial the cap forbids: its recycle budget ends
                else:  # a first attempt, or a callback the customer asked for: waits for the cap
                    out.held.append((c, h))
            out.take = keep
    if w.expiry:
        out.held = [(c, windows.clamp(h, w.expiry.get(c["id"]))) for c, h in out.held]
    return out


async def apply_screening(conn: asyncpg.Connection, s: Screened, now: datetime) -> list[Ended]:
    """Cancel, cap and hold what compliance said; returns the calls that ended."""
    ended = await end_calls(conn, [c["id"] for c in s.dnc], [c["state"] for c in s.dnc], State.CANCELLED,
                            "cancelled", now, {"rule": "dnc", "reason": "number is on the do-not-call list"})
    for c, d in s.expired:
        ended += await end_calls(conn, [c["id"]], c["state"], State.EXPIRED, "expired", now, d)
    for c, h in s.capped:
        ended += await end_calls(conn, [c["id"]], c["state"], State.CAPPED, "capped", now, _hold_detail(h))
    await moves.hold(conn, [(c["id"], c["state"], h.until, _hold_detail(h)) for c, h in s.held], now)
    return ended


def _hold_detail(h: compliance.Hold) -> dict[str, Any]:
    return {"rule": h.rule, **h.detail, "until": h.until.isoformat()}


async def build(conn: asyncpg.Connection, settings: Settings, secret: bytes, name: str, t: Target,
                pace: Pace, take: list[asyncpg.Record], owner: str | None = None) -> Request:
    """The provider request for these calls, with its own signed callback URLs; ``owner``:
    the one agent every row goes to (an agent-scheduled callback)."""
    names: set[str] = set()
    for c in take:
        names.update((c["fields"] or {}).keys())
    slots = await slots_for(conn, name, t, names)
    chunk_id = int(await conn.fetchval(Q.chunk_next_id))
    token = make_token(secret, "chunk", chunk_id)
    rows = [
        chunker.Row(c["id"], c["e164"], c["priority"], list(c["agents"]) if c["agents"] else None,
                    c["fields"])
        for c in take
    ]
    named = None
    order: list[str] | None = None
    offered_to: list[str | None] | None = None
    inline_agents = t.agent_mapping == "inline" and any(r.agents for r in rows)
    pool = ([a for a in (pace.agents if pace.takers is None else pace.takers) if a != "*"]
            or list(dict.fromkeys(t.agents)))  # the list as configured, once each
    if owner is not None:
        named = owner
    elif pool and not inline_agents and len(rows) < len(pool):
        # Ryng round-robins only within one request, starting from the first agent each
        # time: small chunks (a single-lead campaign, a one-slot refill) would all land on
        # the first agent. We keep our own rotation across requests and start each
        # request's agent list where the previous one stopped.
        order = await rotation(conn, name, t, pool, len(rows))
        if t.kind == "campaign" and len(rows) == 1:
            named = order[0]
    if t.agent_mapping == "global" and pace.room is not None and pool:
        # pacing by agent: only the agents with room are named, so row i goes to the
        # i-th of them (round-robin within the request), and each row says to whom
        order = order or pool
        offered_to = [named or order[i % len(order)] for i in range(len(rows))]
    if t.agent_mapping == "inline" and named is None and order is None and pool:
        # sent inline: Ryng reads each row's agents (a row without is refused); a lead naming
        # none goes to the agents ready now (chunker falls back to the static list otherwise)
        rows = [r if r.agents else dataclasses.replace(r, agents=list(pool)) for r in rows]
    base = settings.base_url
    built = chunker.build(
        name, t, rows, slots,
        connect_url=f"{base}/callbacks/ryng/connect/{token}",
        terminal_url=f"{base}/callbacks/ryng/terminal/{token}",
        chunk_id=chunk_id, named_agent=named, agent_order=order,
    )
    request: dict[str, Any] = {"kind": built.kind, "body": built.body}
    if built.sheet is not None:
        request["sheet"] = built.sheet.decode()
    if t.kind == "queue":
        request["queue_id"] = t.queue_id
    return Request(chunk_id, token, request, built.kind, named, offered_to)


async def rotation(conn: asyncpg.Connection, name: str, t: Target, pool: list[str], n: int) -> list[str]:
    """``pool`` (the agents with room) in rotation order from where the target's rotation
    stands; it moves on past the first ``n`` of them.

    The rotation walks a stable order, the configured agents then any others by name,
    skipping those not in ``pool``. A position in ``pool`` itself meant nothing: under
    pacing by agent it is most room first, an order that changes with every call (alice,
    alice, bob, alice while bob was ready with more room)."""
    ring = list(dict.fromkeys(t.agents)) + sorted(set(pool) - set(t.agents))
    at = int(await conn.fetchval(Q.target_rotation_at, name)) % len(ring)
    walk = ring[at:] + ring[:at]
    order = [a for a in walk if a in set(pool)]
    # the next request starts after the last agent named here, whoever was skipped on the way
    await conn.execute(Q.target_rotation_move, name, (at + walk.index(order[n - 1]) + 1) % len(ring))
    return order


async def orphaned_to_uncertain(conn: asyncpg.Connection, now: datetime, stale_s: float,
                                claim_max_s: float = 600.0) -> list[int]:
    """Chunks whose sender died mid-request (or has held them past any request's time):
    their calls wait as uncertain."""
    out: list[int] = []
    async with conn.transaction():
        for r in await conn.fetch(Q.chunks_orphaned, now - timedelta(seconds=stale_s), now,
                                  now - timedelta(seconds=claim_max_s)):
            out.append(r["id"])
            await chunk_calls(conn, r["id"], State.SUBMITTING, State.UNCERTAIN, "uncertain", now,
                              {"chunk_id": r["id"], "reason": "sender died mid-request"})
    return out


async def prove_unsettled(conn: asyncpg.Connection, now: datetime) -> list[int]:
    """Chunks left uncertain although a callback had already proved them taken."""
    ids = [r["id"] for r in await conn.fetch(Q.chunks_proved_unsettled)]
    for chunk_id in ids:
        async with conn.transaction():
            await chunk_taken(conn, chunk_id, now, "proved taken by an earlier callback")
    return ids


async def requeue_uncertain(
    conn: asyncpg.Connection, now: datetime, after_min: float
) -> tuple[int, int, list[Ended]]:
    """Uncertain calls with no callback after ``after_min``: re-queued once, then failed;
    those of a cancelled batch are cancelled. Returns (re-queued, failed, ended)."""
    await prove_unsettled(conn, now)
    ended: list[Ended] = []
    async with conn.transaction():
        due = await conn.fetch(Q.calls_uncertain_due, now - timedelta(minutes=after_min))
        cancel = [r["id"] for r in due if r["batch_cancelled"]]
        again = [r["id"] for r in due if not r["batch_cancelled"] and r["requeued"] == 0]
        give_up = [r["id"] for r in due if not r["batch_cancelled"] and r["requeued"] > 0]
        await moves.requeue(conn, again, now, f"no callback within {after_min:g} min of an uncertain send")
        ended += await end_calls(conn, give_up, State.UNCERTAIN, State.FAILED, "uncertain_failed", now,
                                 {"reason": "uncertain twice; not re-queued again"})
        ended += await end_calls(conn, cancel, State.UNCERTAIN, State.CANCELLED, "cancelled", now,
                                 {"rule": "batch_cancelled",
                                  "reason": "the batch was cancelled; not re-queued"})
    return len(again), len(give_up), ended
