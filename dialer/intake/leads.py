"""One raw row → one validated lead, encoded as a line of PostgreSQL COPY text.

This runs in the intake worker (a child process for files, a thread for API bodies),
so it is plain synchronous code with no database access.
"""

from __future__ import annotations

import itertools
import json
import re
import zoneinfo
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from dialer.intake import lead_numbers, phones
from dialer.intake.columns import ColumnMap
from dialer.intake.phones import e164_each
from dialer.intake.readers import RowBlock

COPY_COLUMNS = (
    "batch_id", "line", "raw_number", "e164", "priority", "agents",
    "external_id", "timezone", "fields", "state", "reason", "target",
    "numbers", "number_notes", "expires_at",
)
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})
_NULL = "\\N"
_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
_MISS = object()
_FAST_FIELDS = frozenset({"number", "priority", "agents", "external_id", "timezone"})
_PLAIN_END = "\t\\N\t\\N\t\\N\n"  # numbers, number_notes, expires_at: one number, no expiry
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
        try:
            return orjson.dumps(v).decode()
        except TypeError:  # an integer past 64 bits inside (jsonfile.loads keeps them exact)
            pass  # or nested past orjson's 255 levels: the lead's row is refused below
        if _depth(v) > _MAX_DEPTH:
            raise NestedTooDeep(f"a value is nested more than {_MAX_DEPTH} levels deep")
        text: str = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        return text
    return str(v)


# PostgreSQL's jsonb codec (orjson) writes at most 255 levels; readers take up to 1,024
_MAX_DEPTH = 255


class NestedTooDeep(ValueError):
    """A lead's value nested deeper than can be stored: the row is invalid."""


def _depth(v: Any) -> int:
    """How deeply ``v`` nests lists and dicts (iteratively: no recursion limit)."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            deepest = max(deepest, d)
            if d > _MAX_DEPTH:
                break
            stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x))
    return deepest


def _split_agents(v: Any) -> list[str]:
    if type(v) is str and "," not in v and ";" not in v and "|" not in v:
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
        # A hash of every accepted number (8 bytes each): tells finalise whether the
        # in-batch duplicate scan is needed at all. Two numbers with one hash only cost
        # that scan (about one chance in 10^7 at a million rows); a repeat is never missed.
        self._numbers: array[int] | None = array("q")
        self.invalid = 0

    def lead(self, line: int, values: dict[str, Any] | None, error: str | None) -> list[str | None]:
        """The COPY values for one row (None is NULL)."""
        try:
            return self._lead(line, values, error)
        except NestedTooDeep as e:
            return self._invalid(line, None, str(e))

    def _lead(self, line: int, values: dict[str, Any] | None, error: str | None) -> list[str | None]:
        """``lead``'s work. Hot path: keep it flat."""
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
            self._numbers.append(hash(e164))
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

    def fast_path_fits(self, header: list[str]) -> bool:
        """The CSV fast paths know the usual columns; a file with more numbers or an
        expiry column takes ``lead`` for every row."""
        return all(f is None or f in _FAST_FIELDS for f in map(self.columns.field, header))

    def text_row_encoder(self, header: list[str]) -> Callable[[int, dict[str, str]], str]:
        """``copy_line(lead(line, values, None))`` for rows whose values are all ``str``
        keyed by exactly ``header`` (a CSV file's rows), specialised for that header: the
        hot path of file intake. Any other row goes through ``lead`` (a test holds the two
        equal)."""
        fields = [self.columns.field(h) for h in header]
        key = {f: h for h, f in zip(header, fields, strict=True) if f is not None}
        custom_keys = tuple(h for h, f in zip(header, fields, strict=True) if f is None)
        number_key = key["number"]
        priority_key, agents_key = key.get("priority"), key.get("agents")
        ext_key, tz_key = key.get("external_id"), key.get("timezone")
        normalise, region, dumps = phones.normalise, self.region, orjson.dumps
        check_agents, known = self._check_agents, self._known_agents
        head = self.batch_id + "\t"
        tail = "\tpending\t\\N\t" + self.target + _PLAIN_END
        safe_tail = _SPECIAL.search(self.batch_id + self.target) is None
        copy_line, invalid, zones = self.copy_line, self._invalid, _zones()
        limit = _MAX_FIELD_CHARS
        agents_seen: dict[str, tuple[str | None, str | None, bool]] = {}

        def agents_entry(agents: str) -> tuple[str | None, str | None, bool]:
            """(array literal or None, why the row is invalid or None, literal needs no escape)."""
            agent_list = _split_agents(agents)
            if agent_list and check_agents:
                unknown = [a for a in agent_list if a not in known]
                if unknown:
                    return None, (f"agents: unknown agent(s) {', '.join(unknown)} "
                                  f"for target {self.rules.name}"), True
            literal = _array_literal(agent_list) if agent_list else None
            return literal, None, literal is None or _SPECIAL.search(literal) is None

        def encode(line: int, values: dict[str, str]) -> str:
            self._ext = None
            ext = None
            if ext_key is not None:
                ext = values[ext_key].strip()[:limit] or None
                self._ext = ext
            raw = values[number_key]
            if not raw or not raw.strip():
                return copy_line(invalid(line, raw or None, "number: missing"))
            e164, why = normalise(raw, region)
            if e164 is None:
                return copy_line(invalid(line, raw, f"number: {why}"))
            prio = "0"
            if priority_key is not None and (text := values[priority_key]):
                text = text.strip()
                try:
                    n = int(text)
                except ValueError:
                    return copy_line(invalid(line, raw, f"priority: {text!r} is not a whole number"))
                if not _PRIO_MIN <= n <= _PRIO_MAX:
                    return copy_line(invalid(line, raw, f"priority: {n} is out of range"))
                prio = str(n)
            agents_literal, agents_safe = None, True
            if agents_key is not None and (agents := values[agents_key]):
                # a file names few distinct agent lists: each one is split and checked once
                found = agents_seen.get(agents)
                if found is None:
                    if len(agents_seen) >= 4096:
                        agents_seen.clear()
                    found = agents_seen[agents] = agents_entry(agents)
                agents_literal, unknown, agents_safe = found
                if unknown is not None:
                    return copy_line(invalid(line, raw, unknown))
            tz_name = None
            if tz_key is not None and (tz := values[tz_key]):
                tz_name = tz.strip() or None
                if tz_name and tz_name not in zones:
                    return copy_line(invalid(line, raw, f"timezone: {tz_name!r} is not an IANA time zone"))
            numbers = self._numbers
            if numbers is not None:
                numbers.append(hash(e164))
                if len(numbers) > _TRACK_MAX:
                    self._numbers = None
            custom = {k: v[:limit] for k in custom_keys if (v := values[k])}
            fields_json = dumps(custom).decode() if custom else None
            # Anything to escape? Zone names never need it; JSON text holds a control
            # character or a backslash only as an escape, which starts with a backslash.
            if (safe_tail and agents_safe
                    and (fields_json is None or "\\" not in fields_json)
                    and _SPECIAL.search(raw if ext is None else raw + ext) is None):
                # the common case: one string, no list of columns
                return (f"{head}{line}\t{raw}\t{e164}\t{prio}\t"
                        f"{agents_literal if agents_literal is not None else chr(92) + 'N'}\t"
                        f"{ext if ext is not None else chr(92) + 'N'}\t"
                        f"{tz_name if tz_name is not None else chr(92) + 'N'}\t"
                        f"{fields_json if fields_json is not None else chr(92) + 'N'}{tail}")
            return copy_line([
                self.batch_id, str(line), raw, e164, prio, agents_literal, ext, tz_name, fields_json,
                "pending", None, self.target, None, None, None,
            ])

        return encode

    def text_block_encoder(self, header: list[str]) -> Callable[[RowBlock], list[str]]:
        """COPY lines for a ``RowBlock`` of a CSV file with this header, column by column:
        the phone numbers in one call, the rest in comprehensions. A row with anything out
        of the ordinary (an invalid value, a time zone, a character to escape) goes through
        ``text_row_encoder`` instead, so every line is what ``lead`` makes of the row."""
        row_encoder = self.text_row_encoder(header)
        index = {self.columns.field(h): i for i, h in enumerate(header)}
        custom = tuple((h, i) for i, h in enumerate(header) if self.columns.field(h) is None)
        i_num = index["number"]
        i_prio, i_agents = index.get("priority"), index.get("agents")
        i_ext, i_tz = index.get("external_id"), index.get("timezone")
        region, dumps, limit = self.region, orjson.dumps, _MAX_FIELD_CHARS
        head = self.batch_id + "\t"
        tail = "\tpending\t\\N\t" + self.target + _PLAIN_END
        safe = _SPECIAL.search(self.batch_id + self.target) is None
        null = "\\N"
        agents_seen: dict[str, str | None] = {}  # agent list → its literal; None: not plain

        def agents_literal(text: str) -> str | None:
            lit = agents_seen.get(text, _MISS)
            if lit is _MISS:
                if len(agents_seen) >= 4096:
                    agents_seen.clear()
                items = _split_agents(text)
                if not items or (self._check_agents and any(a not in self._known_agents for a in items)):
                    lit = None  # no agent after all, or an unknown one: the row encoder says
                else:
                    lit = _array_literal(items)
                    if _SPECIAL.search(lit) is not None:
                        lit = None
                agents_seen[text] = lit
            return lit  # type: ignore[return-value]

        def slow(line: int, row: list[str]) -> str:
            return row_encoder(line, dict(zip(header, row, strict=True)))

        def encode(block: RowBlock) -> list[str]:
            rows, first = block.rows, block.first_line
            if not (safe and block.plain):
                return [slow(n, row) for n, row in enumerate(rows, first)]
            e164s = e164_each([r[i_num] for r in rows], region)
            prios: list[str | None]
            if i_prio is None:
                prios = ["0"] * len(rows)
            else:
                prios = [("0" if not p else str(int(p)) if p.isdigit() and p.isascii() and len(p) < 10
                          else None) for p in (r[i_prio] for r in rows)]
            agents: list[str | None]
            if i_agents is None:
                agents = [null] * len(rows)
            else:
                agents = [null if not a else agents_literal(a) for a in (r[i_agents] for r in rows)]
            exts = ([null] * len(rows) if i_ext is None
                    else [r[i_ext].strip()[:limit] or null for r in rows])
            dicts = [{k: v[:limit] for k, i in custom if (v := r[i])} for r in rows]
            jsons = [dumps(d).decode() if d else null for d in dicts]
            out: list[str] = []
            add = out.append
            accepted: list[str] = []
            for n, row, e164, prio, ag, ext, js in zip(range(first, first + len(rows)), rows, e164s,
                                                       prios, agents, exts, jsons, strict=True):
                if (e164 is None or prio is None or ag is None or "\\" in js[1:]
                        or (i_tz is not None and row[i_tz])):
                    add(slow(n, row))
                    continue
                accepted.append(e164)
                add(f"{head}{n}\t{row[i_num]}\t{e164}\t{prio}\t{ag}\t{ext}\t{null}\t{js}{tail}")
            numbers = self._numbers
            if numbers is not None:
                numbers.extend(map(hash, accepted))
                if len(numbers) > _TRACK_MAX:
                    self._numbers = None
            return out

        return encode

    def repeats_a_number(self) -> bool | None:
        """Whether an accepted number may have come twice — False only when none did (None:
        not tracked, the input was too big)."""
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
