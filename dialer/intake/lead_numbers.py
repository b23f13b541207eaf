"""The rarer lead columns, off the encoder's hot path: more numbers and an expiry.

A lead may carry several numbers (``number2``, ``number3``…, or a ``numbers`` list).
Each is validated on its own: the lead keeps its valid ones in order (the first is
dialed first) and notes the others for the report; it is rejected only when no number
is usable. Duplicates and the DNC list are checked per number at finalise
(``intake/number_checks.py``).

``expires_at`` is an ISO 8601 date or time. With an offset it is that instant; a time
without one is in the lead's local time; a date means the end of that day (midnight
after it) in the lead's local time. The lead's local time is its ``timezone`` column,
else its number's zone — where a number spans several zones, the earliest of them, so a
lead is never dialed after it expired anywhere it may be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from dialer.intake import phones

_MAX_NUMBERS = 10
_SPLIT = re.compile(r"[;|,]")
_UNKNOWN = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class Numbers:
    raw: str | None = None
    e164: str | None = None
    numbers: list[str] | None = None  # every usable number, in order (None: just one)
    fields: list[str] | None = None  # the column of each usable number
    notes: list[dict[str, Any]] | None = None  # numbers left out, for the report
    error: str | None = None  # no usable number: the lead is invalid


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v if isinstance(v, str) else str(v)


def candidates(primary: Any, more: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, raw number) in the lead's order: number, number2, number3…, then ``numbers``."""
    out: list[tuple[str, str]] = [("number", _text(primary))]
    slots = sorted((int(k[6:]), v) for k, v in more.items() if k.startswith("number") and k[6:].isdigit())
    out += [(f"number{n}", _text(v)) for n, v in slots]
    listed = more.get("numbers")
    if listed is not None and listed != "":
        items = listed if isinstance(listed, list) else _SPLIT.split(_text(listed))
        n = max([2, *(s + 1 for s, _ in slots)])
        for item in items:
            if _text(item).strip():
                out.append((f"number{n}", _text(item)))
                n += 1
    return out


def resolve(primary: Any, more: dict[str, Any], region: str) -> Numbers:
    """Every number of the lead, validated on its own."""
    cands = candidates(primary, more)
    if len(cands) > _MAX_NUMBERS:
        return Numbers(raw=cands[0][1] or None,
                       error=f"numbers: at most {_MAX_NUMBERS} numbers per lead, found {len(cands)}")
    good: list[tuple[str, str, str]] = []  # (column, raw, e164)
    notes: list[dict[str, Any]] = []
    for col, raw in cands:
        if not raw.strip():
            continue  # a blank cell (a CSV's number2 column on a one-number row): no number
        e164, why = phones.normalise(raw, region)
        if e164 is None:
            notes.append({"field": col, "number": raw[:200], "outcome": "invalid", "reason": f"{col}: {why}"})
        elif any(g[2] == e164 for g in good):
            first = next(g[0] for g in good if g[2] == e164)
            notes.append({"field": col, "number": raw[:200], "outcome": "duplicate",
                          "reason": f"{col}: same number as {first}"})
        else:
            good.append((col, raw, e164))
    if not good:
        why = "; ".join(n["reason"] for n in notes) or "number: missing"
        return Numbers(raw=next((r for _, r in cands if r.strip()), "")[:200] or None, error=why)
    return Numbers(
        raw=good[0][1], e164=good[0][2],
        numbers=[g[2] for g in good] if len(good) > 1 else None,
        fields=[g[0] for g in good], notes=notes or None,
    )


def numbers_literal(numbers: list[str] | None) -> str | None:
    """A PostgreSQL array literal (E.164 numbers need no quoting)."""
    return "{" + ",".join(numbers) + "}" if numbers else None


def notes_json(n: Numbers) -> str | None:
    """``calls.number_notes``: which column each usable number came from, and the numbers
    left out (None for a lead that is plainly one number)."""
    if n.numbers is None and not n.notes and n.fields == ["number"]:
        return None
    return orjson.dumps({"fields": n.fields, "rejected": n.notes or []}).decode()


def _zones(tz_name: str | None, e164: str) -> list[ZoneInfo]:
    if tz_name:
        return [ZoneInfo(tz_name)]
    names = [n for n in phones.time_zones(e164) if n != _UNKNOWN]
    return [ZoneInfo(n) for n in names] or [ZoneInfo("UTC")]


def expiry(value: Any, tz_name: str | None, e164: str) -> tuple[datetime | None, str | None]:
    """(the instant the lead expires, None) or (None, why the value is not one)."""
    if isinstance(value, datetime):
        text = value.isoformat()
    elif isinstance(value, date):
        text = value.isoformat()
    else:
        text = _text(value).strip()
    if not text:
        return None, None
    day: date | None = None
    at: datetime | None = None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
        else:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if at is not None and at.tzinfo is not None:
            return at.astimezone(UTC), None
        zones = _zones(tz_name, e164)
        if day is not None:
            local = datetime.combine(day + timedelta(days=1), time(0, 0))
        else:
            assert at is not None
            local = at
        return min(local.replace(tzinfo=z).astimezone(UTC) for z in zones), None
    except (ValueError, OverflowError):
        return None, f"expires_at: {text[:60]!r} is not an ISO 8601 date or time"
