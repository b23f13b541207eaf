"""Compliance guard rails at dispatch time: calling hours (with regional overrides),
holidays in the lead's local date, and per-number attempt caps across all targets.

Every hold names its rule and until when, for the audit trail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import asyncpg
import phonenumbers
from phonenumbers import geocoder

from dialer.config import Settings, Target
from dialer.dispatch import hours
from dialer.store.queries import Q

_US_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS",
    "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA",
    "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS", "Missouri": "MO", "Montana": "MT",
    "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM",
    "New York": "NY", "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK",
    "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC",
    "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT",
    "Virginia": "VA", "Washington": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Washington D.C.": "DC", "District of Columbia": "DC",
}
_CA_PROVINCES = {
    "Alberta": "AB", "British Columbia": "BC", "Manitoba": "MB", "New Brunswick": "NB",
    "Newfoundland and Labrador": "NL", "Nova Scotia": "NS", "Ontario": "ON",
    "Prince Edward Island": "PE", "Quebec": "QC", "Saskatchewan": "SK", "Northwest Territories": "NT",
    "Nunavut": "NU", "Yukon": "YT",
}
_SUBDIVISIONS = {"US": frozenset(_US_STATES.values()), "CA": frozenset(_CA_PROVINCES.values())}
_SUBDIVISION = re.compile(r"[A-Z0-9]{1,3}")
UNRECOGNISED = "calling_hours_by_region.*(strictest: unrecognised region)"


@dataclass(frozen=True, slots=True)
class Hold:
    until: datetime
    rule: str
    detail: dict[str, Any]


_BY_PREFIX: dict[str, str | None] = {}


def region_of_number(e164: str) -> str | None:
    # NANP geography is decided by country code + NPA-NXX: compute once per prefix
    if e164.startswith("+1") and len(e164) == 12:
        key = e164[:8]
        if key not in _BY_PREFIX:
            if len(_BY_PREFIX) > 200_000:
                _BY_PREFIX.clear()
            _BY_PREFIX[key] = _region_of_number(e164)
        return _BY_PREFIX[key]
    return _region_of_number(e164)


@lru_cache(maxsize=65536)
def _region_of_number(e164: str) -> str | None:
    """ISO 3166 code for the number: a subdivision (US-TX) where the geography says, else
    the country (DE), else None."""
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    country = phonenumbers.region_code_for_number(num)
    if not country or country == "ZZ":
        return None
    if country in ("US", "CA"):
        desc = geocoder.description_for_number(num, "en")
        names = _US_STATES if country == "US" else _CA_PROVINCES
        if desc:
            tail = desc.rsplit(",", 1)[-1].strip()
            code = names.get(desc.strip()) or (tail if tail in names.values() else None)
            if code:
                return f"{country}-{code}"
    return country


@lru_cache(maxsize=1)
def _zone_countries() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in (Path("/usr/share/zoneinfo/zone.tab"),):
        try:
            for line in path.read_text().splitlines():
                if line and not line.startswith("#"):
                    parts = line.split("\t")
                    if len(parts) >= 3:
                        out[parts[2]] = parts[0]
        except OSError:
            continue
    return out


def region_of(e164: str, fields: dict[str, Any] | None, tz: str | None) -> str | None:
    for key in ("region", "Region", "REGION", "state_code"):
        v = (fields or {}).get(key)
        if isinstance(v, str) and v.strip():
            return v.strip().upper()
    r = region_of_number(e164)
    if r is None and tz:
        return _zone_countries().get(tz)
    return r


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    return frozenset(phonenumbers.SUPPORTED_REGIONS) | frozenset(_zone_countries().values())


def known_region(code: str) -> bool:
    """An ISO 3166 country (DE) or subdivision (US-TX): the country must be one the phone
    metadata or the zone table knows; a subdivision is checked for the US and Canada, its
    shape elsewhere."""
    country, dash, sub = code.partition("-")
    if country not in _countries():
        return False
    if not dash:
        return True
    listed = _SUBDIVISIONS.get(country)
    return sub in listed if listed is not None else _SUBDIVISION.fullmatch(sub) is not None


def _intersect(windows: Sequence[hours.Window]) -> hours.Window | None:
    """The strictest window: every one of them must allow the instant (same-day windows)."""
    start = max(w.start for w in windows)
    end = min(w.end for w in windows)
    if any(w.start > w.end for w in windows):  # across midnight: take the first, conservatively
        return windows[0]
    return hours.Window(start, end) if start < end else None


def load_ics(path: str) -> set[date]:
    import icalendar

    cal = icalendar.Calendar.from_ical(Path(path).read_bytes())
    days: set[date] = set()
    for ev in cal.walk("VEVENT"):
        start = ev.get("dtstart")
        if start is None:
            continue
        d0 = start.dt if isinstance(start.dt, date) else None
        if isinstance(d0, datetime):
            d0 = d0.date()
        if d0 is None:
            continue
        end = ev.get("dtend")
        d1 = end.dt if end is not None else d0 + timedelta(days=1)
        if isinstance(d1, datetime):
            d1 = d1.date() + timedelta(days=1)
        d = d0
        while d < max(d1, d0 + timedelta(days=1)):
            days.add(d)
            d += timedelta(days=1)
    return days


class Rules:
    """Built once from settings; answers 'may this lead be called now, else until when?'."""

    def __init__(self, settings: Settings) -> None:
        c = settings.compliance
        self.by_region = {k: hours.window(v) for k, v in c.calling_hours_by_region.items()}
        base = {date.fromisoformat(d) for d in c.holidays}
        if c.holidays_ics:
            base |= load_ics(c.holidays_ics)
        self.holidays: dict[str, frozenset[date]] = {}
        for name, t in settings.targets.items():
            days = set(base) | {date.fromisoformat(d) for d in t.holidays}
            if t.holidays_ics:
                days |= load_ics(t.holidays_ics)
            self.holidays[name] = frozenset(days)
        self.caps = [(r.count, timedelta(hours=r.window_h)) for r in c.max_attempts_per_number]

    def window_for(self, t: Target, region: str | None) -> tuple[hours.Window | None, str]:
        own = hours.window(t.calling_hours)
        if not self.by_region:
            return own, "calling_hours"
        if region and region in self.by_region:
            return self.by_region[region], f"calling_hours_by_region.{region}"
        if region and not known_region(region):
            # a lead's region we cannot place (a typo, a name): any window may apply to it
            return _intersect([own, *self.by_region.values()]), UNRECOGNISED
        country = region.split("-")[0] if region else None
        if region and "-" in region:
            # a subdivision we know with no window of its own: its country's, else the target's
            if country in self.by_region:
                return self.by_region[country], f"calling_hours_by_region.{country}"
            return own, "calling_hours"
        if country:
            # subdivision unknown: every window that could apply in that country, the strictest
            cands = [w for k, w in self.by_region.items() if k.split("-")[0] == country]
            if not cands:
                return own, "calling_hours"
            if country not in self.by_region:
                cands.append(own)
            return _intersect(cands), f"calling_hours_by_region.{country}-*(strictest)"
        return _intersect([own, *self.by_region.values()]), "calling_hours_by_region.*(strictest)"

    def check(self, target_name: str, t: Target, e164: str, tz: str | None,
              fields: dict[str, Any] | None, now: datetime) -> Hold | None:
        holidays = self.holidays.get(target_name, frozenset())
        if not self.by_region and not holidays and t.calling_hours == "00:00-24:00":
            return None  # nothing can hold this lead: skip the geography
        region = region_of(e164, fields, tz)
        win, rule = self.window_for(t, region)
        zones = hours.zones_for(e164, tz)
        if win is None:
            return Hold(now + timedelta(days=1), rule,
                        {"region": region, "reason": "no instant satisfies every window that may apply"})
        if hours.inside(zones, win, now) and not _holiday(zones, holidays, now):
            return None
        nxt = next_open(zones, win, holidays, now)
        if holidays and _holiday(zones, holidays, now):
            rule = "holidays"
        end = "24:00" if win.end == time.max else f"{win.end:%H:%M}"
        return Hold(nxt or now + timedelta(days=1), rule,
                    {"region": region, "window": f"{win.start:%H:%M}-{end}"})


def _holiday(zones: tuple[Any, ...], holidays: frozenset[date], at: datetime) -> bool:
    return bool(holidays) and any(at.astimezone(z).date() in holidays for z in zones)


def next_open(zones: tuple[Any, ...], win: hours.Window, holidays: frozenset[date], now: datetime,
              days: int = 14) -> datetime | None:
    cands: list[datetime] = []
    for z in zones:
        local = now.astimezone(z)
        for d in range(days + 1):
            day = (local + timedelta(days=d)).date()
            start = datetime.combine(day, win.start, tzinfo=z).astimezone(UTC)
            if start >= now:
                cands.append(start)
    for c in sorted(cands):
        if hours.inside(zones, win, c) and not _holiday(zones, holidays, c):
            return c
    return None


async def cap_holds(conn: asyncpg.Connection, caps: list[tuple[int, timedelta]], numbers: list[str],
                    now: datetime, exclude: Sequence[int] = ()) -> dict[str, Hold]:
    """Numbers a new attempt would push over a cap, with when the window allows again.

    Takes a transaction-scoped lock per number (in sorted order: no deadlocks), so two
    instances claiming calls to one number serialise and see each other's attempts.
    """
    if not caps or not numbers:
        return {}
    uniq = sorted(set(numbers))
    await conn.execute(Q.number_locks, uniq)
    longest = max(w for _, w in caps)
    rows = await conn.fetch(Q.attempts_since, uniq, now - longest, list(exclude))
    times: dict[str, list[datetime]] = {}
    for r in rows:
        times.setdefault(r["e164"], []).append(r["submitted_at"])
    out: dict[str, Hold] = {}
    for number, ts in times.items():
        ts.sort()
        for count, window in caps:
            recent = [t for t in ts if t > now - window]
            if len(recent) >= count:
                until = recent[len(recent) - count] + window  # when the oldest counted one ages out
                prev = out.get(number)
                if prev is None or until > prev.until:
                    out[number] = Hold(until, "max_attempts_per_number",
                                       {"count": count, "window_h": window.total_seconds() / 3600,
                                        "attempts_in_window": len(recent)})
    return out
