"""Phone numbers to E.164, behind one small adapter.

``rphonenumbers`` (a Rust port of libphonenumber, ~10x faster) is used when it imports and
was built from the same metadata release as the installed ``phonenumbers`` (pyproject pins
``phonenumbers`` to that release); ``phonenumbers`` otherwise. A property test compares the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from types import ModuleType

import phonenumbers as _reference


def pick(fast: ModuleType | None, reference: ModuleType) -> ModuleType:
    """The fast library only when it carries the very metadata release the reference does:
    libphonenumber's metadata changes from release to release (a number range valid in one
    is invalid in the next), and the intake must give one answer whichever library runs."""
    if fast is not None and getattr(fast, "__phonenumbers_version__", None) == reference.__version__:
        return fast
    return reference


try:  # pragma: no cover - depends on the wheel being available
    import rphonenumbers as _fast_module

    _fast: ModuleType | None = _fast_module
except ImportError:  # pragma: no cover
    _fast = None

_impl: ModuleType = pick(_fast, _reference)
IMPLEMENTATION = _impl.__name__


def normalise(raw: str, region: str, impl: ModuleType | None = None) -> tuple[str | None, str | None]:
    """Return ``(e164, None)`` or ``(None, reason)``."""
    lib = impl or _impl
    text = raw.strip()
    if not text:
        return None, "number is empty"
    try:
        num = lib.parse(text, region)
    except lib.NumberParseException as e:
        return None, f"not a phone number ({_parse_reason(e)})"
    if not lib.is_valid_number(num):
        return None, f"not a valid phone number for region {region}"
    return lib.format_number(num, lib.PhoneNumberFormat.E164), None


def e164_each(raws: Iterable[str], region: str) -> list[str | None]:
    """``normalise(raw, region)[0]`` for each of ``raws`` (no reasons: a None goes back
    through ``normalise`` to learn why). The batch form of the intake's hot path."""
    lib = _impl
    parse, valid, fmt, error = lib.parse, lib.is_valid_number, lib.format_number, lib.NumberParseException
    e164 = lib.PhoneNumberFormat.E164
    out: list[str | None] = []
    add = out.append
    for raw in raws:
        try:
            num = parse(raw.strip(), region)
        except error:
            add(None)
            continue
        add(fmt(num, e164) if valid(num) else None)
    return out


def _parse_reason(e: Exception) -> str:
    msg = str(e)
    # "(1) The string supplied did not seem to be a phone number." → readable tail
    return msg.split(") ", 1)[-1].rstrip(".").lower() if ") " in msg else msg.lower()


_ZONES_BY_PREFIX: dict[str, tuple[str, ...]] = {}


def time_zones(e164: str) -> tuple[str, ...]:
    """IANA zones the number may be in ('Etc/Unknown' when the library cannot tell)."""
    if e164.startswith("+1") and len(e164) == 12:  # NANP: the zone follows NPA-NXX
        key = e164[:8]
        found = _ZONES_BY_PREFIX.get(key)
        if found is None:
            if len(_ZONES_BY_PREFIX) > 200_000:
                _ZONES_BY_PREFIX.clear()
            found = _ZONES_BY_PREFIX[key] = _time_zones(e164)
        return found
    return _time_zones(e164)


@lru_cache(maxsize=4096)
def _time_zones(e164: str) -> tuple[str, ...]:
    from phonenumbers import timezone

    num = _reference.parse(e164, None)
    return tuple(timezone.time_zones_for_number(num))


def mask(number: str | None) -> str:
    """``+14155550100`` → ``+1415***0100``: enough to correlate, not enough to dial."""
    if not number:
        return ""
    if len(number) <= 8:
        return number[:2] + "***"
    return number[:5] + "***" + number[-4:]


def is_supported_region(region: str, *, exact: bool = False) -> bool:
    return (region if exact else region.upper()) in _reference.SUPPORTED_REGIONS
