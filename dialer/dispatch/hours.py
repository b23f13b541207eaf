"""Calling hours in the lead's local time.

The zone comes from the lead's ``timezone`` column, else from the number
(``phonenumbers``). A number that spans several zones (a US mobile, say) may only be
called while *every* one of them is inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from dialer.intake import phones

_UNKNOWN = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class Window:
    start: time
    end: time  # exclusive; 24:00 is written as time.max

    @classmethod
    def parse(cls, text: str) -> Window:
        a, b = text.split("-")
        sh, sm = (int(x) for x in a.split(":"))
        eh, em = (int(x) for x in b.split(":"))
        end = time.max if (eh, em) == (24, 0) else time(eh, em)
        return cls(time(sh, sm), end)

    def contains(self, t: time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # across midnight, e.g. 22:00-02:00


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return None


@lru_cache(maxsize=64)
def window(text: str) -> Window:
    return Window.parse(text)


def zones_for(e164: str, tz: str | None) -> tuple[ZoneInfo, ...]:
    if tz:
        z = _zone(tz)
        if z is not None:
            return (z,)
    names = [n for n in phones.time_zones(e164) if n != _UNKNOWN]
    found = tuple(z for z in (_zone(n) for n in names) if z is not None)
    return found or (ZoneInfo("UTC"),)


def inside(zones: tuple[ZoneInfo, ...], win: Window, now: datetime) -> bool:
    return all(win.contains(now.astimezone(z).time()) for z in zones)


def next_open(zones: tuple[ZoneInfo, ...], win: Window, now: datetime,
              horizon: timedelta = timedelta(days=8)) -> datetime | None:
    """The earliest instant ≥ now at which every zone is inside the window."""
    if inside(zones, win, now):
        return now
    # Candidates: each zone's next window openings; the answer is one of them.
    cands: list[datetime] = []
    for z in zones:
        local = now.astimezone(z)
        for d in range(0, horizon.days + 1):
            day = (local + timedelta(days=d)).date()
            start = datetime.combine(day, win.start, tzinfo=z).astimezone(UTC)
            if start >= now:
                cands.append(start)
    for c in sorted(cands):
        if inside(zones, win, c):
            return c
    return None

