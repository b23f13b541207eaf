"""Campaign windows and lead expiry at dispatch time (issue 15).

A target may say when it is active (``active_from``/``active_until``) and when it is
not (``blocked`` periods). Outside its window nothing of the target is sent: its leads
are held, each with an event naming the rule and until when; past ``active_until`` they
can never be sent, so they end ``expired``. Dates and times without an offset are in
the target's ``window_timezone`` (default UTC). A date in ``active_until`` or at the end
of a blocked interval includes that whole day.

A lead expires at its ``expires_at`` or ``lead_ttl_h`` after its batch came in, whichever
is first: it is never sent after that, and ends ``expired`` with the reason. A hold
(calling hours, a holiday, a cap, a blocked period) that would outlast the lead's
expiry is shortened to it, so the lead ends at its expiry, not at the hold's end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from dialer.config import Target
from dialer.dispatch.compliance import Hold
from dialer.store.queries import Q

_DURATION = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    start: datetime
    end: datetime  # exclusive


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def instant(text: str, zone: str, *, end_of_day: bool = False) -> datetime:
    """An ISO date or time; a date is the start of that day (its end with ``end_of_day``)."""
    text = text.strip()
    if len(text) == 10:
        d = date.fromisoformat(text)
        if end_of_day:
            d += timedelta(days=1)
        return datetime(d.year, d.month, d.day, tzinfo=_zone(zone)).astimezone(UTC)
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=_zone(zone))
    return at.astimezone(UTC)


def duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if m is None or text.strip() in ("P", "PT"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration in weeks, days, hours, minutes or "
                         "seconds, like P2D or PT6H")
    w, d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s)


def period(text: str, zone: str) -> Period:
    """``2026-12-24`` (that day), ``start/end`` or ``start/duration`` (ISO 8601 intervals)."""
    a, slash, b = text.partition("/")
    if not slash:
        return Period(instant(a, zone), instant(a, zone, end_of_day=True))
    start = instant(a, zone)
    end = start + duration(b) if b.strip().startswith("P") else instant(b, zone, end_of_day=True)
    if end <= start:
        raise ValueError(f"{text!r} ends before it starts")
    return Period(start, end)


@dataclass(frozen=True, slots=True)
class Gate:
    """Why nothing of a target may be sent now: held until ``until``, or over (None)."""

    rule: str
    until: datetime | None
    detail: dict[str, Any]


def gate(t: Target, now: datetime) -> Gate | None:
    """The target's campaign window at ``now``: None when it may send."""
    if t.active_from is None and t.active_until is None and not t.blocked:
        return None
    zone = t.window_timezone
    until_end = instant(t.active_until, zone, end_of_day=True) if t.active_until else None
    if until_end is not None and now >= until_end:
        return Gate("active_until", None, {
            "active_until": t.active_until,
            "reason": f"the target's campaign ended at {until_end.isoformat()}"})
    if t.active_from is not None:
        start = instant(t.active_from, zone)
        if now < start:
            return Gate("active_from", start, {"active_from": t.active_from,
                                               "reason": "the target's campaign has not started"})
    periods = sorted((period(p, zone), p) for p in t.blocked)
    at, hit = now, None
    for p, text in periods:  # a period may end inside the next: hold until the first free instant
        if p.start <= at < p.end:
            at, hit = p.end, hit or text
    if hit is None:
        return None
    if until_end is not None and at >= until_end:
        return Gate("active_until", None, {"blocked": hit, "active_until": t.active_until,
                                           "reason": "blocked until the target's campaign ends"})
    return Gate("blocked", at, {"blocked": hit, "reason": "the target is in a blocked period"})


@dataclass(frozen=True, slots=True)
class Expiry:
    at: datetime
    rule: str  # expires_at | lead_ttl_h


def expiry_of(expires_at: datetime | None, t: Target | None, batch_created: datetime | None) -> Expiry | None:
    out = Expiry(expires_at, "expires_at") if expires_at is not None else None
    if t is not None and t.lead_ttl_h is not None and batch_created is not None:
        ttl = batch_created + timedelta(hours=t.lead_ttl_h)
        if out is None or ttl < out.at:
            out = Expiry(ttl, "lead_ttl_h")
    return out


def expired_detail(e: Expiry, t: Target | None) -> dict[str, Any]:
    d: dict[str, Any] = {"rule": e.rule, "expired_at": e.at.isoformat(),
                         "reason": "the lead expired before it could be dialed"}
    if e.rule == "lead_ttl_h" and t is not None:
        d["lead_ttl_h"] = t.lead_ttl_h
    return d


async def expiries(conn: asyncpg.Connection, t: Target, rows: Sequence[asyncpg.Record]) -> dict[int, Expiry]:
    """The expiry of each row that has one (a batch query only when the target has a TTL)."""
    created: dict[Any, datetime] = {}
    if t.lead_ttl_h is not None and rows:
        ids = sorted({r["batch_id"] for r in rows}, key=str)
        created = {r["id"]: r["created_at"] for r in await conn.fetch(Q.batches_created, ids)}
    out: dict[int, Expiry] = {}
    for r in rows:
        e = expiry_of(r["expires_at"], t, created.get(r["batch_id"]))
        if e is not None:
            out[r["id"]] = e
    return out


def clamp(hold: Hold, e: Expiry | None) -> Hold:
    """A hold that would outlast the lead: until its expiry, when it ends instead."""
    if e is None or hold.until <= e.at:
        return hold
    return Hold(e.at, hold.rule, {**hold.detail, "expires_at": e.at.isoformat(),
                                  "note": "held until the lead expires"})


@dataclass
class Screen:
    rest: list[asyncpg.Record]
    expired: list[tuple[asyncpg.Record, dict[str, Any]]]
    held: list[tuple[asyncpg.Record, Hold]]
    expiry: dict[int, Expiry]


async def screen(conn: asyncpg.Connection, t: Target, rows: list[asyncpg.Record], now: datetime) -> Screen:
    """Before compliance: expired leads end, a closed campaign window holds (or ends) all."""
    if t.lead_ttl_h is None and t.active_from is None and t.active_until is None and not t.blocked \
            and not any(r["expires_at"] is not None for r in rows):
        return Screen(rows, [], [], {})  # the usual case: nothing to look at
    exp = await expiries(conn, t, rows)
    g = gate(t, now)
    out = Screen([], [], [], exp)
    for r in rows:
        e = exp.get(r["id"])
        if e is not None and e.at <= now:
            out.expired.append((r, expired_detail(e, t)))
        elif g is not None and g.until is None:
            out.expired.append((r, {"rule": g.rule, **g.detail}))
        elif g is not None and g.until is not None:
            out.held.append((r, clamp(Hold(g.until, g.rule, g.detail), e)))
        else:
            out.rest.append(r)
    return out
