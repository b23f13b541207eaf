"""Campaign figures (SPEC §10) of one batch or one target, computed by set-based SQL.

* **leads**: first attempts that are calls (not rejected at intake);
* **attempts**: calls claimed for sending (as the per-number caps count them), re-dials
  included; a call taken back before it was sent is no attempt;
* **penetration** = leads attempted / leads; **contact rate** = answered / attempts;
  **attempts per lead** = attempts / leads attempted;
* **answer rate by hour** of the lead's local day: attempts (and answered) by the hour
  they were claimed, in the lead's zone as the dispatcher reads it (its ``timezone``, else
  its number's; a number spanning several zones counts in the first one);
* **mean talk time** of answered calls, from the talk time their terminal callback
  reported (calls whose callback reported none are left out: ``talk_reported`` says how
  many did);
* **exhaustion**: calls still waiting to be sent / the send rate of the last
  ``RATE_WINDOW``; none when nothing was sent in it (``reason`` says why).

A target's figures cover its batches still open and those created in the last
``window_h`` hours; its exhaustion covers every call of the target still waiting.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import asyncpg
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.tzdata import TIMEZONE_DATA

from dialer.dispatch import hours
from dialer.store.queries import Q

RATE_WINDOW = timedelta(minutes=15)
DEFAULT_WINDOW_H = 24
MAX_WINDOW_H = 31 * 24

_pg_zones: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Hour:
    hour: int  # 0-23, the lead's local time
    attempts: int
    answered: int

    @property
    def answer_rate(self) -> float | None:
        return self.answered / self.attempts if self.attempts else None


@dataclass(frozen=True, slots=True)
class Exhaustion:
    remaining: int  # calls waiting to be sent (pending, scheduled, retry_wait)
    sent_recently: int  # attempts claimed in the last RATE_WINDOW
    window_s: int
    seconds: float | None  # at the current pace; None when it cannot be told
    at: datetime | None
    reason: str | None  # why seconds is None (or 0)

    @property
    def send_rate_per_min(self) -> float:
        return 60.0 * self.sent_recently / self.window_s


@dataclass(frozen=True, slots=True)
class Figures:
    computed_at: datetime
    batches: int
    leads: int
    attempts: int
    leads_attempted: int
    answered: int
    talk_reported: int
    talk_mean_s: float | None
    exhaustion: Exhaustion
    hours: list[Hour] = field(default_factory=list)  # all 24, in order

    @property
    def penetration(self) -> float | None:
        return self.leads_attempted / self.leads if self.leads else None

    @property
    def contact_rate(self) -> float | None:
        return self.answered / self.attempts if self.attempts else None

    @property
    def attempts_per_lead(self) -> float | None:
        return self.attempts / self.leads_attempted if self.leads_attempted else None


async def for_batch(conn: asyncpg.Connection, batch_id: uuid.UUID, now: datetime) -> Figures:
    """The figures of one batch (which must exist)."""
    return await _figures(conn, [batch_id], now, pace=None)


async def for_target(conn: asyncpg.Connection, target: str, now: datetime,
                     window_h: int = DEFAULT_WINDOW_H) -> Figures:
    """The figures of one target: its open batches and those of the last ``window_h`` hours."""
    since = now - timedelta(hours=window_h)
    scope = [r["id"] for r in await conn.fetch(Q.figures_target_batches, target, since)]
    pace = await conn.fetchrow(Q.figures_target_pace, target, now - RATE_WINDOW, now)
    return await _figures(conn, scope, now, pace=pace)


async def target_exhaustion(conn: asyncpg.Connection, target: str, now: datetime) -> Exhaustion:
    """Only the exhaustion estimate of a target: two index reads (cheap at every scrape)."""
    pace = await conn.fetchrow(Q.figures_target_pace, target, now - RATE_WINDOW, now)
    return exhaustion(pace["remaining"], pace["sent_recently"], now)


def exhaustion(remaining: int, sent_recently: int, now: datetime) -> Exhaustion:
    window = int(RATE_WINDOW.total_seconds())
    minutes = window // 60
    if remaining == 0:
        return Exhaustion(0, sent_recently, window, 0.0, now, "nothing is waiting to be sent")
    if sent_recently == 0:
        return Exhaustion(remaining, 0, window, None, None,
                          f"nothing was sent in the last {minutes} min: no pace to go by")
    seconds = remaining * window / sent_recently
    return Exhaustion(remaining, sent_recently, window, seconds, now + timedelta(seconds=seconds), None)


async def _figures(conn: asyncpg.Connection, scope: list[uuid.UUID], now: datetime,
                   pace: asyncpg.Record | None) -> Figures:
    t = await conn.fetchrow(Q.figures_totals, scope, now - RATE_WINDOW, now)
    by_hour = await _hours(conn, scope)
    src = pace if pace is not None else t
    return Figures(
        computed_at=now, batches=len(scope), leads=t["leads"], attempts=t["attempts"],
        leads_attempted=t["leads_attempted"], answered=t["answered"],
        talk_reported=t["talk_reported"], talk_mean_s=t["talk_mean_s"],
        exhaustion=exhaustion(src["remaining"], src["sent_recently"], now),
        hours=[by_hour.get(h, Hour(h, 0, 0)) for h in range(24)],
    )


async def _hours(conn: asyncpg.Connection, scope: list[uuid.UUID]) -> dict[int, Hour]:
    keys = [r["key"] for r in await conn.fetch(Q.figures_zone_keys, scope)]
    if not keys:
        return {}
    known = await _zone_names(conn)
    zones = [_zone_of(k, known) for k in keys]
    rows = await conn.fetch(Q.figures_hours, scope, keys, zones)
    return {r["hour"]: Hour(r["hour"], r["attempts"], r["answered"]) for r in rows}


def _zone_of(key: str, known: frozenset[str]) -> str:
    """The IANA zone of a figures_zone_key: the lead's timezone, else its number's first."""
    if key.startswith("tz:"):
        name = key[3:]
    else:
        name = _single_zone_countries().get(_country_code(key)) or hours.zones_for(key, None)[0].key
    return name if name in known else "UTC"


def _country_code(e164: str) -> str:
    """The calling code of an E.164 number (codes are prefix-free: at most one matches)."""
    codes = _single_zone_countries()
    for n in (1, 2, 3):
        if e164[1:1 + n] in codes:
            return e164[1:1 + n]
    return ""


@lru_cache(maxsize=1)
def _single_zone_countries() -> dict[str, str]:
    """Calling codes whose every number keeps one local time (most countries), by the same
    phonenumbers data the dispatcher reads: their numbers need no lookup one by one (about
    0.1 ms each, seconds for a big batch). Zones that always show the same time (Europe/
    London and Europe/Jersey) count as one."""
    zones: dict[str, set[str]] = {}
    for prefix, names in TIMEZONE_DATA.items():
        for n in (1, 2, 3):  # the code a prefix starts with
            code = prefix[:n]
            if code in TIMEZONE_DATA and int(code) in COUNTRY_CODE_TO_REGION_CODE:
                zones.setdefault(code, set()).update(names)
                break
    out = {}
    for code, found in zones.items():
        first = sorted(found)[0]
        if "Etc/Unknown" not in found and all(_same_time(first, z) for z in found):
            out[code] = first
    return out


_SAMPLES = [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in range(0, 12 * 366, 5)]


@lru_cache(maxsize=2048)
def _same_time(a: str, b: str) -> bool:
    """Two zones agree on the UTC offset at every 5th day from 2020 to 2031."""
    if a == b:
        return True
    try:
        za, zb = ZoneInfo(a), ZoneInfo(b)
    except (KeyError, ValueError):
        return False
    return all(t.astimezone(za).utcoffset() == t.astimezone(zb).utcoffset() for t in _SAMPLES)


async def _zone_names(conn: asyncpg.Connection) -> frozenset[str]:
    global _pg_zones
    if _pg_zones is None:
        _pg_zones = frozenset(r["name"] for r in await conn.fetch(Q.figures_zone_names))
    return _pg_zones
