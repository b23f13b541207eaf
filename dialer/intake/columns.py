"""Column names to lead fields: case-insensitive, with the aliases SPEC §4 lists."""

from __future__ import annotations

import re

_ALIASES: dict[str, tuple[str, ...]] = {
    "number": ("number", "phone", "phone_number", "mobile"),
    "priority": ("priority",),
    "agents": ("agents", "agent", "agentsassigned", "agents_assigned"),
    "external_id": ("external_id", "id", "lead_id", "externalid"),
    "timezone": ("timezone", "time_zone", "tz"),
    # more numbers of the same lead (SPEC §4); number3, phone4… are read by _MORE below
    "number2": ("number2", "alt_number", "alternate_number", "phone2", "mobile2"),
    "numbers": ("numbers", "phones"),  # a list (JSON) or ';' '|' ',' separated
    "expires_at": ("expires_at", "expires", "expiry"),
}
_LOOKUP = {alias: field for field, aliases in _ALIASES.items() for alias in aliases}
_SEP = re.compile(r"[\s\-]+")
_MORE = re.compile(r"^(?:number|phone|phone_number|mobile)_?([2-9]|[1-9]\d)$")

KNOWN = tuple(_ALIASES)


def canonical(name: str) -> str | None:
    """The lead field a column header names, or None for a custom field."""
    key = _SEP.sub("_", name.strip().lower())
    found = _LOOKUP.get(key)
    if found is None and (m := _MORE.match(key)):
        return f"number{m.group(1)}"
    return found


class ColumnMap:
    """Header → field, computed once per header (cached for JSON's per-row keys)."""

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def field(self, name: str) -> str | None:
        try:
            return self._cache[name]
        except KeyError:
            f = self._cache[name] = canonical(name)
            return f

    def check_header(self, header: list[str]) -> None:
        """A file whose header has no number column cannot be read at all."""
        from dialer.errors import FileUnreadable

        fields = [self.field(h) for h in header]
        if "number" not in fields:
            shown = ", ".join(repr(h) for h in header[:20]) or "(none)"
            raise FileUnreadable(
                "no number column: expected one of number, phone, phone_number, mobile; "
                f"found {shown}"
            )
        seen: dict[str, str] = {}
        for h, f in zip(header, fields, strict=True):
            if f is None:
                continue
            if f in seen:
                raise FileUnreadable(f"columns {seen[f]!r} and {h!r} both mean {f}")
            seen[f] = h
