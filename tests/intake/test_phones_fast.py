"""The NANP fast path of ``phones.normalise`` / ``e164_each`` gives exactly the library's
answer: every spelling it takes, in every NANP region, with both libraries."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import phonenumbers
import rphonenumbers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dialer.intake import phones

NANP = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1])
# real area codes of several NANP countries, and a few that are not in service
AREAS = ["201", "212", "305", "415", "416", "604", "787", "876", "268", "242", "671", "555", "311", "911", "800"]


@st.composite
def nanp_spellings(draw: st.DrawFn) -> str:
    area = draw(st.sampled_from(AREAS) | st.text(alphabet="0123456789", min_size=3, max_size=3))
    rest = draw(st.text(alphabet="0123456789", min_size=7, max_size=7))
    digits = area + rest
    prefix = draw(st.sampled_from(["", "", "+1", "+1 ", "1", "1-", "1 ", "+", "+ 1", "11", "+44 "]))
    seps = draw(st.lists(st.sampled_from(["", "", " ", "-", ".", "(", ")", "--", " (", ") "]),
                         min_size=len(digits) + 1, max_size=len(digits) + 1))
    body = "".join(s + d for s, d in zip(seps, digits, strict=False)) + seps[-1]
    return prefix + body


def _agree(raw: str, region: str) -> None:
    for lib in (rphonenumbers, phonenumbers):
        text = raw.strip()
        full = phones.normalise_full(text, region, lib) if text else (None, "number is empty")
        assert phones.normalise(raw, region, impl=lib) == full, (raw, region, lib.__name__)


@settings(max_examples=500, deadline=None)
@given(raw=nanp_spellings(), region=st.sampled_from(NANP))
@example(raw="(415) 555-0100", region="US")
@example(raw="+1 (415) 555-0100", region="CA")
@example(raw="1-415-555-0100", region="US")
@example(raw="14155550100", region="JM")
@example(raw="+14155550100", region="US")
@example(raw="+1 1 415 555 0100", region="US")
@example(raw="4155550100" + " " * 40, region="US")
@example(raw="1" + " " * 30 + "4155550100", region="US")
@example(raw="4155550100", region="GB")  # not a NANP region: the full path
def test_the_nanp_fast_path_agrees_with_the_library(raw: str, region: str) -> None:
    _agree(raw, region)


@settings(max_examples=300, deadline=None)
@given(raw=st.text(alphabet="0123456789 ().-+１٣", max_size=20), region=st.sampled_from([*NANP, "GB"]))
def test_any_short_string_of_digits_and_punctuation_agrees(raw: str, region: str) -> None:
    _agree(raw, region)


def test_e164_each_takes_the_same_answers() -> None:
    raws = ["(415) 555-0100", "+1 415 555 0100", "1-415-555-0100", "415.555.0100", "4155550100",
            "(111) 555-0100", "", "  ", "+44 20 7946 0958", "0207 946 0958", "phone", "+1 (415) 555-01"]
    for region in ("US", "CA", "GB"):
        assert phones.e164_each(raws, region) == [phones.normalise(r, region)[0] for r in raws]


def test_threads_never_see_each_others_number() -> None:
    """The fast path reuses one number object per thread: numbers normalised at once in
    several threads come out as they do one by one."""
    raws = [f"({200 + i % 800}) {200 + i % 700}-{i % 10_000:04d}" for i in range(20_000)]
    expected = [phones.normalise_full(r, "US", phones._impl) for r in raws]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        with ThreadPoolExecutor(8) as pool:
            parts = list(pool.map(lambda k: [phones.normalise(r, "US") for r in raws[k::8]], range(8)))
    finally:
        sys.setswitchinterval(interval)
    got = [None] * len(raws)
    for k, part in enumerate(parts):
        got[k::8] = part
    assert got == expected
    assert sum(e is not None for e, _ in expected) > 1000  # the fast path was taken


def test_each_thread_has_its_own_scratch_number() -> None:
    def scratch(lib: object) -> object:
        phones._nanp_e164("4155550100", lib)  # type: ignore[arg-type]
        return getattr(phones._local, lib.__name__)  # type: ignore[attr-defined]

    here = scratch(rphonenumbers)
    assert scratch(rphonenumbers) is here
    with ThreadPoolExecutor(1) as pool:
        there = pool.submit(scratch, rphonenumbers).result()
    assert there is not here
    assert scratch(phonenumbers) is not here  # nor shared between the two libraries
