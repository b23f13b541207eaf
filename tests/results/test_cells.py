"""``csv_text``: a CSV cell a spreadsheet would evaluate gets a leading ``'``; anything
else, phone numbers first, is left byte for byte as it was."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dialer.results.cells import csv_text

PHONEISH = "0123456789 ().-/+"


def test_what_a_spreadsheet_would_evaluate_is_quoted() -> None:
    for formula in ['=HYPERLINK("http://evil.example","x")', "=1+1", "=", "@SUM(1+1)", "@",
                    "\t=1+1", "\r=1+1", "+SUM(A1)", "-1+cmd|' /C calc'!A0", "+1;2", "-x", "+ 1e5"]:
        assert csv_text(formula) == "'" + formula, formula


def test_numbers_and_ordinary_text_stay_as_they_are() -> None:
    for plain in ["", "+14155550123", "+1 (415) 555-0101", "(415) 555-0101", "415.555.0102",
                  "+44 20 7946 0958", "-3", "-", "+", "12/03", "crm-7", "a=b", " =1", "'=1",
                  "answered", "NO_ANSWER", "alice", "nope"]:
        assert csv_text(plain) == plain, plain


@settings(max_examples=500, deadline=None)
@given(value=st.text())
@example(value="=1+1")
@example(value="+1\n")
@example(value="-\t")
def test_any_text_is_itself_or_itself_after_a_quote(value: str) -> None:
    out = csv_text(value)
    assert out in (value, "'" + value)
    assert out[:1] not in ("=", "@", "\t", "\r")
    if out[:1] in ("+", "-"):
        assert set(out[1:]) <= set(PHONEISH)  # at most arithmetic on digits
    assert csv_text(out) == out  # a quoted cell is not quoted again


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=PHONEISH, max_size=24))
def test_any_phone_spelling_is_unchanged(value: str) -> None:
    assert csv_text(value) == value
