"""One raw row → one validated lead, encoded as a line of PostgreSQL COPY text.

This runs in the intake worker (a child process for files, a thread for API bodies),
so it is plain synchronous code with no database access.
"""

from __future__ import annotations

import itertools
import re
import zoneinfo
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from dialer.intake import lead_numbers, phones
from dialer.intake.columns import ColumnMap

COPY_COLUMNS = (
    "batch_id", "line", "raw_number", "e164", "priority", "agents",
    "external_id", "timezone", "fields", "state", "reason", "target",
    "numbers", "number_notes", "expires_at",
)
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})
_NULL = "\\N"
_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
_MISS = object()
_TRACK_MAX = 2_000_000
_PRIO_MIN, _PRIO_MAX = -(2**31), 2**31 - 1
_MAX_FIELD_CHARS = 4000


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@dataclass(frozen=True, slots=True)
class TargetRules:
    """What the worker needs to know about the target (picklable)."""

    name: str
    default_region: str
    agent_mapping: str
    agents: tuple[str, ...]


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (list, dict)):
        return orjson.dumps(v).decode()
    return str(v)


def _split_agents(v: Any) -> list[str]:
    if type(v) is str and not any(sep in v for sep in ",;|"):
        a = v.strip()
        return [a] if a else []
    if isinstance(v, list):
        items = [_text(x) for x in v]
    else:
        s = _text(v)
        for sep in ("|", ";"):
            s = s.replace(sep, ",")
        items = s.split(",")
    return [a.strip() for a in items if a and a.strip()]


def _array_literal(items: list[str]) -> str:
    inner = ",".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in items)
    return "{" + inner + "}"


class LeadEncoder:
    def __init__(self, batch_id: str, rules: TargetRules) -> None:
        self.batch_id = batch_id
        self.rules = rules
        self.columns = ColumnMap()
        self._known_agents = frozenset(rules.agents)
        self._check_agents = rules.agent_mapping in ("global", "inline") and bool(rules.agents)
        self._field: dict[str, str | None] = {}
        self.region = rules.default_region
        self.target = rules.name
        self._ext: str | None = None
        # Every accepted number as an int (8 bytes each): tells finalise whether the
        # in-batch duplicate scan is needed at all.
        self._numbers: array[int] | None = array("q")
        self.invalid = 0

    def lead(self, line: int, values: dict[str, Any] | None, error: str | None) -> list[str | None]:
        """The COPY values for one row (None is NULL). Hot path: keep it flat."""
        self._ext = None
        if values is None:
            return self._invalid(line, None, error or "unreadable row")
        number: Any = None
        priority: Any = None
        agents: Any = None
        external_id: Any = None
        tz: Any = None
        custom: dict[str, str] | None = None
        more: dict[str, Any] | None = None  # more numbers, expires_at: the rarer columns
        field = self._field
        for key, val in values.items():
            f = field.get(key, _MISS)
            if f is _MISS:
                f = field[key] = self.columns.field(key)
            if f is None:
                if val is None or val == "":
                    continue
                if custom is None:
                    custom = {}
                if key == "fields" and isinstance(val, dict):
                    for k2, v2 in val.items():
                        if v2 is not None and v2 != "":
                            custom[str(k2)] = _text(v2)[:_MAX_FIELD_CHARS]
                else:
                    custom[key] = (val if type(val) is str else _text(val))[:_MAX_FIELD_CHARS]
            elif f == "number":
                number = val
            elif f == "priority":
                priority = val
            elif f == "agents":
                agents = val
            elif f == "external_id":
                external_id = val
            elif f == "timezone":
                tz = val
            else:
                if more is None:
                    more = {}
                more[str(f)] = val
        raw = number if type(number) is str else _text(number)
        ext = None
        if external_id is not None and external_id != "":
            ext = (external_id if type(external_id) is str else _text(external_id)).strip()[
                :_MAX_FIELD_CHARS] or None
        self._ext = ext  # kept on invalid rows too: the results file names them
        several: lead_numbers.Numbers | None = None
        if more is not None and any(k != "expires_at" for k in more):
            several = lead_numbers.resolve(raw, more, self.region)
            if several.error is not None:
                return self._invalid(line, several.raw, several.error)
            raw, e164 = several.raw or raw, several.e164
        elif not raw or not raw.strip():
            return self._invalid(line, raw or None, "number: missing")
        else:
            e164, why = phones.normalise(raw, self.region)
        if e164 is None:
            return self._invalid(line, raw, f"number: {why}")
        prio = "0"
        if priority is not None and priority != "":
            text = (priority if type(priority) is str else _text(priority)).strip()
            try:
                n = int(text)
            except ValueError:
                return self._invalid(line, raw, f"priority: {text!r} is not a whole number")
            if not _PRIO_MIN <= n <= _PRIO_MAX:
                return self._invalid(line, raw, f"priority: {n} is out of range")
            prio = str(n)
        agents_literal = None
        if agents is not None and agents != "":
            agent_list = _split_agents(agents)
            if agent_list and self._check_agents:
                unknown = [a for a in agent_list if a not in self._known_agents]
                if unknown:
                    return self._invalid(
                        line, raw,
                        f"agents: unknown agent(s) {', '.join(unknown)} for target {self.rules.name}",
                    )
            if agent_list:
                agents_literal = _array_literal(agent_list)
        tz_name = None
        if tz is not None and tz != "":
            tz_name = (tz if type(tz) is str else _text(tz)).strip() or None
            if tz_name and tz_name not in _zones():
                return self._invalid(line, raw, f"timezone: {tz_name!r} is not an IANA time zone")
        expires = None
        if more is not None and "expires_at" in more:
            at, bad = lead_numbers.expiry(more["expires_at"], tz_name, e164)
            if bad is not None:
                return self._invalid(line, raw, bad)
            expires = at.isoformat() if at is not None else None
        if self._numbers is not None:
            self._numbers.append(int(e164[1:]))
            if len(self._numbers) > _TRACK_MAX:
                self._numbers = None  # too big to check here: finalise scans instead
        return [
            self.batch_id, str(line), raw, e164, prio, agents_literal, ext, tz_name,
            orjson.dumps(custom).decode() if custom else None,
            "pending", None, self.target,
            lead_numbers.numbers_literal(several.numbers) if several else None,
            lead_numbers.notes_json(several) if several else None,
            expires,
        ]

    def repeats_a_number(self) -> bool | None:
        """Whether an accepted number came twice (None: not tracked, the input was too big)."""
        if self._numbers is None:
            return None
        nums = sorted(self._numbers)
        return any(a == b for a, b in itertools.pairwise(nums))

    def _invalid(self, line: int, raw: str | None, reason: str) -> list[str | None]:
        self.invalid += 1
        raw = raw[:200] if raw else raw
        ext, self._ext = self._ext, None
        return [self.batch_id, str(line), raw, None, "0", None, ext, None, None, "invalid", reason,
                self.target, None, None, None]

    @staticmethod
    def copy_line(values: list[str | None]) -> str:
        line = "\t".join([_NULL if v is None else v for v in values])
        # Escaping is rare: check the row once, escape value by value only when needed.
        if _SPECIAL.search("".join([v for v in values if v])) is None:
            return line + "\n"
        return "\t".join([_NULL if v is None else v.translate(_ESCAPE) for v in values]) + "\n"

    def encode(self, rows: Iterable[tuple[int, dict[str, Any] | None, str | None]]) -> Iterator[str]:
        for line, values, error in rows:
            yield self.copy_line(self.lead(line, values, error))
