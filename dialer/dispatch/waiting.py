"""Why isn't it dialing? (SPEC §10, issue 16.1): a target's waiting calls by what holds them.

One set-based query (``waiting_counts``, over the dispatch index) groups the waiting calls
by their own hold — a rule's (``calls.hold_reason``: calling hours, holiday, cap, campaign
window), a recycle or callback wait, a batch still coming in — and leaves the rest as
*dispatchable now*. The target's own state then says what holds those, first that applies:
``paused``, ``campaign_window`` (a closed window, not yet applied to them), ``breaker`` (this
instance's circuit breaker is open), ``rate_budget`` (the provider's shared rate budget has no
room for one more call now: full at ``max_calls_per_s`` / ``max_requests_per_s``, or a
``Retry-After`` holds every send), ``pacing`` (no room under ready agents x calls per agent); of the
rest, as many as pacing has room for are ``ready`` and the others ``pacing``.

A lead is counted once, under what holds it; ``expired_soon`` counts again those that expire
within ``EXPIRY_HORIZON`` (whatever holds them). Calling hours (holidays, caps) are known for
a lead once the dispatcher has looked at it, which it does only with room to send: until then
a pending lead outside its hours counts as ``ready``, ``pacing`` or the target's own hold
(README, "Known gap": the rules run in Python per number, not over every pending lead here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dialer.config import Target
from dialer.dispatch import abandon, windows
from dialer.dispatch.pacing import Pace, StaticAgents, measure
from dialer.store.queries import Q

EXPIRY_HORIZON = timedelta(hours=1)

# Every reason, in the order the API, the console and the metric list them.
REASONS: tuple[str, ...] = (
    "ready", "pacing", "paused", "breaker", "rate_budget", "campaign_window", "calling_hours",
    "holiday", "cap", "scheduled_callback", "recycle", "receiving", "other", "expired_soon")
ABOUT: dict[str, str] = {
    "ready": "dispatchable now: agents have room, nothing holds them",
    "pacing": "dispatchable, but calls in flight are at ready agents × calls_per_agent",
    "paused": "the target is paused (API, console or the abandon-rate guard)",
    "breaker": "this instance's circuit breaker for the target is open after provider failures",
    "rate_budget": "the provider's shared rate budget has no room for one more call now "
                   "(full at max_calls_per_s / max_requests_per_s, or a Retry-After)",
    "campaign_window": "outside the target's campaign window (active_from, blocked)",
    "calling_hours": "outside the lead's calling hours",
    "holiday": "a holiday in the lead's local date",
    "cap": "the number reached max_attempts_per_number",
    "scheduled_callback": "an agent-scheduled callback not yet due, or in its owner's grace",
    "recycle": "a re-dial waiting for its recycle rule's after_min (or the next number's)",
    "receiving": "its batch is still coming in",
    "other": "held by another rule (or a hold recorded before migration 0013)",
    "expired_soon": "expires within the hour, whatever holds it (also counted under that)",
}


@dataclass(frozen=True, slots=True)
class Reason:
    reason: str
    count: int
    clears_at: datetime | None  # when the first of them is released (expired_soon: expires)


@dataclass(slots=True)
class Waiting:
    target: str
    computed_at: datetime
    total: int  # live waiting leads (expired_soon not added again)
    reasons: list[Reason] = field(default_factory=list)
    pace: Pace | None = None

    def count(self, reason: str) -> int:
        return next((r.count for r in self.reasons if r.reason == reason), 0)


async def for_target(conn: asyncpg.Connection, name: str, t: Target, dispatcher: Any, paused: bool,
                     now: datetime, agents: Any = None) -> Waiting:
    """``dispatcher``: the running one (its breakers, budget and agent source), or None."""
    rows = await conn.fetch(Q.waiting_counts, name, now, now + EXPIRY_HORIZON, t.lead_ttl_h)
    counts: dict[str, int] = {}
    clears: dict[str, datetime | None] = {}
    expiring, first_expiry = 0, None
    for r in rows:
        counts[r["why"]] = counts.get(r["why"], 0) + int(r["n"])
        clears[r["why"]] = _first(clears.get(r["why"]), r["clears_at"])
        expiring += int(r["expiring"])
        first_expiry = _first(first_expiry, r["first_expiry"])
    source = agents or (dispatcher.agents if dispatcher is not None else None) or StaticAgents({name: t})
    pace = await abandon.as_dispatched(conn, name, t, await measure(conn, name, t, source, now))
    now_n = counts.pop("now", 0)
    clears.pop("now", None)
    if now_n:
        why, until = await _target_hold(conn, name, t, dispatcher, paused, pace, now)
        if why is None:
            ready = min(now_n, pace.free)
            counts["ready"] = ready
            if now_n > ready:
                counts["pacing"] = now_n - ready
                clears["pacing"] = pace.next_ready_at
        else:
            counts[why] = counts.get(why, 0) + now_n
            clears[why] = until if counts[why] == now_n else _first(clears.get(why), until)
    counts["expired_soon"] = expiring
    clears["expired_soon"] = first_expiry
    total = sum(n for k, n in counts.items() if k != "expired_soon")
    out = [Reason(k, counts.get(k, 0), clears.get(k) if counts.get(k) else None) for k in REASONS]
    return Waiting(name, now, total, out, pace)


async def _target_hold(conn: asyncpg.Connection, name: str, t: Target, dispatcher: Any, paused: bool,
                       pace: Pace, now: datetime) -> tuple[str | None, datetime | None]:
    """What holds every dispatchable-now call of the target, with until when (None: not told)."""
    if paused:
        return "paused", None
    g = windows.gate(t, now)
    if g is not None:
        return "campaign_window", g.until
    breaker = dispatcher.breakers.get(name) if dispatcher is not None else None
    if breaker is not None and breaker.state != "closed":
        retry_in = float(str(breaker.snapshot()["retry_in_s"]))
        return "breaker", now + timedelta(seconds=retry_in)
    budget = getattr(dispatcher, "budget", None)
    if budget is not None and budget.enabled:
        # full at max_calls_per_s / max_requests_per_s, or a Retry-After hold
        wait = await budget.wait_for_one(conn, now)
        if wait > 0:
            return "rate_budget", now + timedelta(seconds=wait)
    if pace.free <= 0:
        return "pacing", pace.next_ready_at
    return None, None


def _first(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None or a <= b else b
