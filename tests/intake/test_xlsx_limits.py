"""Workbooks that unpack far past their size are refused before openpyxl reads them."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dialer.errors import FileUnreadable
from dialer.intake.files import PROCESS_THRESHOLD_BYTES, survey
from dialer.intake.readers import RawRow, open_reader
from dialer.intake.readers.xlsxfile import MAX_SHARED_STRINGS_BYTES, MAX_SHEET_BYTES
from tests.intake.workbooks import declare_size, workbook

STRINGS = "xl/sharedStrings.xml"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A small file whose shared-strings table unpacks past the limit."""
    data = workbook(MAX_SHARED_STRINGS_BYTES + (16 << 20))
    assert len(data) < PROCESS_THRESHOLD_BYTES  # small enough to be parsed inside the daemon
    return data


@contextmanager
def memory_peak() -> Iterator[list[int]]:
    tracemalloc.start()
    out = [0]
    try:
        yield out
    finally:
        out[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def unreadable(data: bytes) -> str:
    with pytest.raises(FileUnreadable) as info, open_reader(io.BytesIO(data), "xlsx") as r:
        list(r)
    return info.value.message


def test_a_workbook_within_the_limits_reads_as_before() -> None:
    with open_reader(io.BytesIO(workbook(256 << 10)), "xlsx") as r:
        assert r.header == ["number"]
        assert list(r) == [RawRow(2, {"number": "+14155550100"})]


def test_shared_strings_past_the_limit_are_refused_before_they_are_read(bomb: bytes) -> None:
    size = zipfile.ZipFile(io.BytesIO(bomb)).getinfo(STRINGS).file_size
    with memory_peak() as peak:
        message = unreadable(bomb)
    assert message == (
        f"not a readable .xlsx workbook: its shared-strings table ({STRINGS}) unpacks to "
        f"{size:,} bytes, over the "
        f"{MAX_SHARED_STRINGS_BYTES:,}-byte limit: save the sheet as CSV, or split it into "
        "smaller workbooks"
    )
    assert peak[0] < 4 << 20  # the 80 MiB table was never unpacked


def test_a_part_far_larger_than_its_compressed_bytes_is_a_zip_bomb() -> None:
    data = workbook(8 << 20)  # under the size limit, but 400 times its compressed size
    message = unreadable(data)
    assert message.startswith(f"not a readable .xlsx workbook: its shared-strings table ({STRINGS}) "
                              "unpacks to 8,388,")
    assert message.endswith("past the 100 times of a real workbook: refused as a zip bomb")


def test_a_worksheet_declared_past_its_limit_is_refused() -> None:
    data = declare_size(workbook(), "xl/worksheets/sheet1.xml", MAX_SHEET_BYTES + 1)
    assert unreadable(data) == (
        "not a readable .xlsx workbook: worksheet xl/worksheets/sheet1.xml unpacks to "
        f"{MAX_SHEET_BYTES + 1:,} bytes, over the {MAX_SHEET_BYTES:,}-byte limit"
    )


def test_a_part_never_yields_more_than_it_declares(bomb: bytes) -> None:
    """A zip that understates a part's size passes the check, but reading stops at the
    declared size and the CRC no longer matches: memory stays flat."""
    liar = declare_size(bomb, STRINGS, 5000)
    with memory_peak() as peak:
        message = unreadable(liar)
    assert message == f"not a readable .xlsx workbook: BadZipFile: Bad CRC-32 for file '{STRINGS}'"
    assert peak[0] < 4 << 20


def test_a_workbook_goes_to_the_worker_by_its_unpacked_size(tmp_path: Path, bomb: bytes) -> None:
    small, big = tmp_path / "small.xlsx", tmp_path / "big.xlsx"
    small.write_bytes(workbook())
    big.write_bytes(bomb)
    fp, parse_size = survey(small, "xlsx")
    assert parse_size < PROCESS_THRESHOLD_BYTES  # parsed in a thread of the daemon
    fp, parse_size = survey(big, "xlsx")
    assert fp.size < PROCESS_THRESHOLD_BYTES <= parse_size  # parsed in the worker process
    csv = tmp_path / "a.csv"
    csv.write_text("number\n+14155550100\n")
    fp, parse_size = survey(csv, "csv")
    assert parse_size == fp.size == csv.stat().st_size
