"""Log scrubbing: phone numbers masked wherever they appear, dates left alone; file names that
are not UTF-8 shown, never a lost line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from dialer.logs import ConsoleFormatter, JsonFormatter, scrub


@pytest.mark.parametrize(("text", "want"), [
    ("dialing +14155550100", "dialing +1415***0100"),
    ("raw (415) 555-0100 or 0151 1234 5678", "raw (4155***0100 or 0151***5678"),
    ("a file named +14155550100.csv", "a file named +1415***0100.csv"),
    ("processed/2026-12-07/+14155550100.csv", "processed/2026-12-07/+1415***0100.csv"),
    ("on 2026-12-07 4155550100", "on 2026-12-07 4155***0100"),
    ("+2026-12-07", "+2026***1207"),  # with a plus it is a number, whatever its shape
    ("20261207", "2026***1207"),  # no separators: it could be a number
    ("2026-13-07", "2026***1307"),  # no month 13: not a date
])
def test_numbers_are_masked(text: str, want: str) -> None:
    assert scrub(text) == want


@pytest.mark.parametrize("text", [
    "inbox file filed: /srv/inbox/processed/2026-12-07/leads.csv",
    "expires 2026-12-07 10:00 (from 1999-01-31)",
    "ended_at 2026-12-07T10:11:12+00:00",
])
def test_dates_are_not_masked(text: str) -> None:
    assert scrub(text) == text


def test_a_json_line_masks_the_number_and_keeps_the_day_folder() -> None:
    record = logging.LogRecord("dialer.intake.inbox", logging.INFO, __file__, 1,
                               "inbox file %s", ("ingested",), None)
    record.path = "processed/2026-12-07/4155550100.csv"
    out = orjson.loads(JsonFormatter().format(record))
    assert out["path"] == "processed/2026-12-07/4155***0100.csv"


def test_a_file_name_that_is_not_utf8_is_logged_with_its_bytes_shown_not_lost() -> None:
    """A Linux name is bytes; one that is not UTF-8 reaches a log record with lone surrogates,
    which no encoder takes: the line would be dropped (a 'Logging error' instead)."""
    name = os.fsdecode(b"processed/2026-12-07/caf\xe9.csv")
    record = logging.LogRecord("dialer.intake.inbox", logging.WARNING, __file__, 1,
                               "could not file %s", (name,), None)
    record.path = name
    record.where = Path(name)
    out = orjson.loads(JsonFormatter().format(record))
    assert out["msg"] == "could not file processed/2026-12-07/caf\\xe9.csv"
    assert out["path"] == out["where"] == "processed/2026-12-07/caf\\xe9.csv"
    assert ConsoleFormatter().format(record).encode().endswith(
        b"could not file processed/2026-12-07/caf\\xe9.csv  [path=processed/2026-12-07/caf\\xe9.csv "
        b"where=processed/2026-12-07/caf\\xe9.csv]")
