"""Phone numbers to E.164, behind one small adapter.

``rphonenumbers`` (a Rust port of libphonenumber, ~10x faster) is used when it imports and
was built from the same metadata release as the installed ``phonenumbers`` (pyproject pins
``phonenumbers`` to that release); ``phonenumbers`` otherwise. A property test compares the two.
"""

from __future__ import annotations

import threading
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


# -- NANP fast path ---------------------------------------------------------------------------
# Most numbers sales ops load are North American ones spelled as ten digits with the usual
# punctuation ("(415) 555-0100", "415.555.0100", "+1 415 555 0100", "1-415-555-0100"). For
# these ``parse`` would only drop the punctuation and a leading 1 (country code or national
# prefix), so the number is built straight from the digits and ``is_valid_number`` decides:
# 1.4 µs against 3.3 µs per number. Only a valid answer is taken from here; anything else
# (other spellings, other regions, invalid numbers) goes the full way, so results and
# reasons are the library's own (a property test compares the two paths).
_NANP_REGIONS = frozenset(_reference.COUNTRY_CODE_TO_REGION_CODE[1])
_FAST_MAX_LEN = 32  # parse refuses inputs over 250 characters; keep far below
_local = threading.local()  # one reusable PhoneNumber per thread and library


def _digits(text: str) -> str:
    # five replaces beat one str.translate on strings this short (0.15 against 0.55 µs)
    return text.replace(" ", "").replace("-", "").replace(".", "").replace("(", "").replace(")", "")


def _nanp_e164(text: str, lib: ModuleType) -> str | None:
    """``+1`` and the ten digits when ``text`` is such a spelling of a valid NANP number;
    None when it is not (the caller then takes the full path)."""
    if text.isdigit():
        digits = text[1:] if len(text) == 11 and text[0] == "1" else text
    elif len(text) > _FAST_MAX_LEN:
        return None
    elif text[0] == "+":
        if text[1:2] != "1":
            return None
        digits = _digits(text[2:])
    else:
        digits = _digits(text)
        if len(digits) == 11 and digits[0] == "1":
            digits = digits[1:]
    if len(digits) != 10 or digits[0] in "01" or not (digits.isascii() and digits.isdigit()):
        return None
    num = getattr(_local, lib.__name__, None)
    if num is None:
        num = lib.PhoneNumber(country_code=1, national_number=0)
        setattr(_local, lib.__name__, num)
    num.national_number = int(digits)
    return "+1" + digits if lib.is_valid_number(num) else None


def normalise(raw: str, region: str, impl: ModuleType | None = None) -> tuple[str | None, str | None]:
    """Return ``(e164, None)`` or ``(None, reason)``."""
    lib = impl or _impl
    text = raw.strip()
    if not text:
        return None, "number is empty"
    if region in _NANP_REGIONS and (e164 := _nanp_e164(text, lib)) is not None:
        return e164, None
    return normalise_full(text, region, lib)


def normalise_full(text: str, region: str, lib: ModuleType) -> tuple[str | None, str | None]:
    """``normalise`` by the library alone (no fast path); ``text`` stripped, not empty."""
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
    fast = _nanp_e164 if region in _NANP_REGIONS else None
    out: list[str | None] = []
    add = out.append
    for raw in raws:
        text = raw.strip()
        if fast is not None and text and (quick := fast(text, lib)) is not None:
            add(quick)
            continue
        try:
            num = parse(text, region)
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
