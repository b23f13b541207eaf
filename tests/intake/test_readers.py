"""Streaming lead-file readers: formats, encodings, broken input, memory, resumption."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import string
import tempfile
import tracemalloc
import zipfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.errors import FileReplaced, FileUnreadable
from dialer.intake.readers import (
    FORMATS,
    FileId,
    RawRow,
    detect_format,
    fingerprint,
    open_file,
    open_reader,
)

# ----------------------------------------------------------------------------- helpers


def read(data: bytes, fmt: str = "csv", **kw: Any) -> tuple[list[str] | None, list[RawRow]]:
    with open_reader(io.BytesIO(data), fmt, **kw) as r:
        return r.header, list(r)


def rows(data: bytes, fmt: str = "csv", **kw: Any) -> list[tuple[int, Any, Any]]:
    return [(r.line, r.values, r.error) for r in read(data, fmt, **kw)[1]]


def unreadable(data: bytes, fmt: str = "csv", **kw: Any) -> str:
    with pytest.raises(FileUnreadable) as info:
        read(data, fmt, **kw)
    return info.value.message


def xlsx_bytes(sheet_rows: list[list[Any]], *, blank_rows_first: int = 0) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    for i, row in enumerate(sheet_rows, 1 + blank_rows_first):
        for j, v in enumerate(row, 1):
            if v is not None:
                ws.cell(row=i, column=j, value=v)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


class NonSeekable(io.RawIOBase):
    """A pipe-like stream: read() only, at most ``step`` bytes at a time."""

    def __init__(self, data: bytes, step: int = 7000) -> None:
        self._buf = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b: Any) -> int:
        chunk = self._buf.read(min(len(b), self._step))
        b[: len(chunk)] = chunk
        return len(chunk)


def peak_bytes(fn: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def drain(path: Path, fmt: str, **kw: Any) -> int:
    n = 0
    with open_reader(path, fmt, **kw) as r:
        for _ in r:
            n += 1
    return n


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("leads.csv", "csv"),
        ("LEADS.CSV", "csv"),
        ("x.txt", "csv"),
        ("a.b.json", "json"),
        ("x.ndjson", "ndjson"),
        ("x.JSONL", "ndjson"),
        ("x.xlsx", "xlsx"),
        ("x.xls", None),
        ("csv", None),
        ("x.csv.part", None),
        ("", None),
    ],
)
def test_detect_format(name: str, fmt: str | None) -> None:
    assert detect_format(name) == fmt
    assert fmt is None or fmt in FORMATS


def test_csv_happy_path() -> None:
    header, got = read(b"number,priority,Name \n+4915112345678,3,Ann\n+4915112345679,1,Bob\n")
    assert header == ["number", "priority", "Name"]
    assert got == [
        RawRow(2, {"number": "+4915112345678", "priority": "3", "Name": "Ann"}),
        RawRow(3, {"number": "+4915112345679", "priority": "1", "Name": "Bob"}),
    ]


@pytest.mark.parametrize("delim", [",", ";", "\t"])
def test_csv_delimiter_sniffing(delim: str) -> None:
    # the values hold the other two delimiters, many times: only the header decides
    others = "".join(d for d in ",;\t" if d != delim) * 3
    data = delim.join(["number", "agents", "note"]) + "\n"
    data += delim.join(["1", others, "x y"]) + "\n"
    header, got = read(data.encode())
    assert header == ["number", "agents", "note"]
    assert got == [RawRow(2, {"number": "1", "agents": others, "note": "x y"})]


def test_csv_delimiter_ties_and_quoted_header() -> None:
    assert read(b"a;b,c\n1;2,3\n")[0] == ["a;b", "c"]  # tie → ","
    assert read(b'"Name, first";"Phone"\nA;1\n')[0] == ["Name, first", "Phone"]
    assert read(b"number\n1\n")[1] == [RawRow(2, {"number": "1"})]


def test_csv_quoted_fields_and_embedded_newlines() -> None:
    data = b'number,note\n1,"multi\nline, with comma"\n2,"say ""hi"""\n\n3,plain\n'
    assert rows(data) == [
        (2, {"number": "1", "note": "multi\nline, with comma"}, None),
        (4, {"number": "2", "note": 'say "hi"'}, None),
        (6, {"number": "3", "note": "plain"}, None),
    ]


def test_csv_crlf_and_lone_cr() -> None:
    assert rows(b"a,b\r\n1,2\r\n\r\n3,4\r\n") == [
        (2, {"a": "1", "b": "2"}, None),
        (4, {"a": "3", "b": "4"}, None),
    ]
    assert rows(b"a,b\r1,2\r3,4\r") == [  # classic Mac line endings
        (2, {"a": "1", "b": "2"}, None),
        (3, {"a": "3", "b": "4"}, None),
    ]


def test_csv_short_long_and_blank_rows() -> None:
    data = b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n,,\n10,11,12,,\n  \n,x,\n\n13\n"
    assert rows(data) == [
        (2, {"a": "1", "b": "2", "c": "3"}, None),
        (3, {"a": "4", "b": "5", "c": ""}, None),
        (4, None, "4 values but the header has 3 columns"),
        (6, {"a": "10", "b": "11", "c": "12"}, None),  # trailing empties: spreadsheet padding
        (7, {"a": "  ", "b": "", "c": ""}, None),  # whitespace is data; validation rejects it
        (8, {"a": "", "b": "x", "c": ""}, None),
        (10, {"a": "13", "b": "", "c": ""}, None),
    ]


def test_csv_header_rules() -> None:
    header, got = read(b"\n\n,,\n number , Name,,\n1,x\n")
    assert header == ["number", "Name"]
    assert got == [RawRow(5, {"number": "1", "Name": "x"})]
    assert read(b"a,,b\n1,2,3\n")[0] == ["a", "column_2", "b"]
    msg = unreadable(b"number,name,Number,name,number\n1,2,3,4,5\n")
    assert "duplicate" in msg
    assert "'number'" in msg
    assert "'name'" in msg
    assert "'Number'" not in msg


def test_csv_header_only_and_empty_files(tmp_path: Path) -> None:
    assert read(b"number,name\n") == (["number", "name"], [])
    assert read(b"number,name") == (["number", "name"], [])
    assert read(b"number,name\n\n\n,\n") == (["number", "name"], [])
    assert unreadable(b"") == "file is empty"
    assert "no CSV header" in unreadable(b"\n \n,,\n;;\n\t\r\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(FileUnreadable, match="file is empty"):
        fingerprint(empty, "csv")
    with pytest.raises(FileUnreadable, match="file is empty"):
        open_reader(empty, "csv")
    with pytest.raises(FileUnreadable, match="file is empty"):
        open_reader(empty, "csv", encoding="utf-8")


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FileUnreadable, match="cannot open"):
        open_reader(tmp_path / "nope.csv", "csv")
    with pytest.raises(FileUnreadable, match="cannot open"):
        fingerprint(tmp_path, "csv")


def test_open_file_follows_no_link_below_its_folder_and_opens_only_the_file_expected(tmp_path: Path) -> None:
    box = tmp_path / "inbox"
    (box / "sales").mkdir(parents=True)
    real = tmp_path / "real.csv"
    real.write_bytes(b"number\n1\n")
    (box / "ln.csv").symlink_to(real)
    with open_file(box / "ln.csv") as f:  # links followed: a path a user typed
        assert f.read() == b"number\n1\n"
    with pytest.raises(FileUnreadable, match="cannot open file: it is a symbolic link"):
        open_file(box / "ln.csv", no_links_below=box)
    (box / "renewals").symlink_to(tmp_path)  # a folder on the way down: not followed either
    with pytest.raises(FileUnreadable, match="cannot open file: it is a symbolic link"):
        open_file(box / "renewals" / "real.csv", no_links_below=box)
    with pytest.raises(FileReplaced, match="a symbolic link was put in its place"):  # where a file was
        open_file(box / "renewals" / "real.csv", no_links_below=box, expect=FileId.of(real.stat()))
    os.mkfifo(box / "sales" / "pipe.csv")  # would block an open for reading until a writer came
    with pytest.raises(FileUnreadable, match="cannot open file: not a regular file"):
        open_file(box / "sales" / "pipe.csv", no_links_below=box)
    seen = FileId.of(real.stat())
    with open_file(real, no_links_below=tmp_path, expect=seen) as f:
        assert f.read() == b"number\n1\n"
    real.write_bytes(b"number\n2\n3\n")
    with pytest.raises(FileReplaced, match="its content changed"):
        open_file(real, no_links_below=tmp_path, expect=seen)
    real.unlink()
    with pytest.raises(FileReplaced, match="it was removed"):
        open_file(real, no_links_below=tmp_path, expect=seen)


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        open_reader(io.BytesIO(b"a\n1\n"), "xls")


# ----------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig"),
        ("cp1252", "cp1252"),
        ("utf-16", "utf-16"),
        ("utf-16-be-bom", "utf-16"),
    ],
)
def test_encodings(tmp_path: Path, encoding: str, expected: str) -> None:
    text = "number;Name;Stadt\n+491;Müller;Köln\n+492;Zoë „Ω“;Straße\n"
    if encoding == "utf-16-be-bom":
        data = codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    elif encoding == "cp1252":
        data = text.replace("Ω", "O").encode("cp1252")
        text = text.replace("Ω", "O")
    else:
        data = text.encode(encoding)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    fp = fingerprint(path, "csv")
    assert fp.encoding == expected
    assert fp.size == len(data)
    want = [
        RawRow(2, {"number": "+491", "Name": "Müller", "Stadt": "Köln"}),
        RawRow(3, {"number": "+492", "Name": text.split("\n")[2].split(";")[1], "Stadt": "Straße"}),
    ]
    for enc in (None, fp.encoding):  # decided by the reader, or given by the caller
        with open_reader(path, "csv", encoding=enc) as r:
            assert r.header == ["number", "Name", "Stadt"]
            assert list(r) == want
        assert read(data, encoding=enc)[1] == want


def test_fingerprint_hash_and_xlsx(tmp_path: Path) -> None:
    import hashlib

    data = b"a,b\n" + b"1,2\n" * 400_000  # several 1 MiB blocks
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    fp = fingerprint(path, "csv")
    assert fp.sha256 == hashlib.sha256(data).hexdigest()
    assert (fp.size, fp.encoding) == (len(data), "utf-8")
    x = tmp_path / "f.xlsx"
    x.write_bytes(xlsx_bytes([["number"], [1]]))
    fx = fingerprint(x, "xlsx")
    assert fx.encoding is None
    assert fx.sha256 == hashlib.sha256(x.read_bytes()).hexdigest()


def test_cp1252_byte_late_in_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(b"number,name\n")
        for i in range(150_000):  # ~3 MiB of ASCII first
            f.write(b"+4915112%06d,plain ascii name\n" % i)
        f.write("+49151,Müller\n".encode("cp1252"))
    assert fingerprint(path, "csv").encoding == "cp1252"
    with open_reader(path, "csv") as r:
        last = None
        for row in r:
            last = row
    assert last == RawRow(150_002, {"number": "+49151", "name": "Müller"})
    # the same decision for a seekable and a non-seekable stream
    data = path.read_bytes()
    assert read(data)[1][-1] == last
    with open_reader(NonSeekable(data), "csv") as r:  # type: ignore[arg-type]
        assert list(r)[-1] == last


def test_utf8_sequence_cut_at_eof_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv"
    path.write_bytes(b"a,b\n1,\xc3")
    assert fingerprint(path, "csv").encoding == "cp1252"


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_binary_files_are_unreadable(tmp_path: Path, fmt: str) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(4000)
    path = tmp_path / f"image.{fmt}"
    path.write_bytes(png)
    with pytest.raises(FileUnreadable, match="binary file"):
        fingerprint(path, fmt)
    with pytest.raises(FileUnreadable, match="binary file"):
        open_reader(path, fmt)
    assert "binary file" in unreadable(png, fmt)


def test_nul_after_the_sniffing_window_is_a_row_error() -> None:
    data = b"a,b\n" + b"1,2\n" * 3000 + b"3,\x004\n5,6\n"
    got = read(data)[1]
    assert len(got) == 3002
    assert got[-2] == RawRow(3002, None, "NUL byte in line")
    assert got[-1] == RawRow(3003, {"a": "5", "b": "6"})
    # a caller-given encoding skips the sniffing: NULs are row errors everywhere
    assert rows(b"a,b\n1,\x00\n2,3\n", encoding="utf-8") == [
        (2, None, "NUL byte in line"),
        (3, {"a": "2", "b": "3"}, None),
    ]


# ----------------------------------------------------------------------------- json


def test_json_array_and_leads_object() -> None:
    leads: list[dict[str, Any]] = [
        {"number": "+491", "priority": 2, "w": 1.5, "x": [1, {"y": 2.0}]},
        {"number": "2"},
    ]
    want = [RawRow(1, leads[0]), RawRow(2, leads[1])]
    assert read(json.dumps(leads).encode(), "json") == (None, want)
    body = {"meta": {"leads": [{"no": 1}]}, "leads": leads, "after": [1, 2]}
    assert read(json.dumps(body).encode(), "json") == (None, want)
    assert read(b"\xef\xbb\xbf [ ]", "json") == (None, [])
    assert read(b'{"leads": []}', "json") == (None, [])
    got = read(json.dumps(leads).encode(), "json")[1][0].values
    assert got is not None
    assert type(got["priority"]) is int
    assert type(got["w"]) is float


def test_json_non_object_items_are_row_errors() -> None:
    assert rows(b'[{"a": 1}, [1], "s", 3, true, null, {"b": 2}]', "json") == [
        (1, {"a": 1}, None),
        (2, None, "not a JSON object (got list)"),
        (3, None, "not a JSON object (got string)"),
        (4, None, "not a JSON object (got number)"),
        (5, None, "not a JSON object (got boolean)"),
        (6, None, "not a JSON object (got null)"),
        (7, {"b": 2}, None),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[{"a": 1}, {"b": 2}, {"c"', "invalid JSON after item 2, at the end of the file"),
        (b'[{"a": 1}] trailing', "trailing garbage"),
        (b'[{"a": 1},, ]', "invalid JSON after item 1"),
        (b'{"leads": [{"a": 1}', "invalid JSON after item 1"),
        (b'"just a string"', "not a string"),
        (b"42", "not a number"),
        (b"null", "not null"),
        (b"  \n ", "only whitespace"),
        (b"<html>", "unexpected character"),
        (b'{"lead": []}', 'no "leads" key'),
        (b'{"leads": {"a": 1}}', '"leads" must be a list of leads, not object'),
        (b'{"leads": 5}', '"leads" must be a list of leads, not number'),
        (b'[{"a": 1} {"b": 2}]', "invalid JSON after item 1, at byte 10: expected ',' or ']'"),
        (b'[{"a": 1},]', "invalid JSON after item 1, at byte 10: unexpected character ']'"),
        (b'[{"a": 1}, {"b": tru}]', "invalid JSON after item 1, in the value from byte 11 to 21"),
        (b'{"leads": [], "x" 1}', "expected ':' after a key"),
        (b'{"x": [1, {]}, "leads": []}', "invalid JSON after item 0, in the value from byte 6"),
    ],
)
def test_json_unreadable(data: bytes, message: str) -> None:
    assert message in unreadable(data, "json")


def test_truncated_big_json_reports_where(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    with path.open("wb") as f:
        f.write(b"[")
        for i in range(20_000):
            f.write(b'{"number": "+49%d", "n": %d},' % (i, i))
        f.write(b'{"number": "+49')
    with pytest.raises(FileUnreadable, match="after item 20000") as info:
        drain(path, "json")
    assert "byte" in info.value.message


def test_json_item_over_the_limit_is_a_row_error_read_past_unparsed() -> None:
    # as a CSV or NDJSON line over max_line_bytes; a parser fed such an item block by block
    # took time growing with the square of its size (and its memory)
    big = {"number": "+491", "notes": "x" * (20 << 20)}
    leads: list[dict[str, Any]] = [{"number": "+490"}, big, {"number": "+492"}]
    data = json.dumps(leads).encode()
    size, start = len(json.dumps(big)), data.index(b'{"number": "+491"')
    reason = f"item is longer than {1 << 20} bytes ({size} bytes from byte {start})"
    want = [RawRow(1, leads[0]), RawRow(2, None, reason), RawRow(3, leads[2])]
    got: list[RawRow] = []
    assert peak_bytes(lambda: got.extend(read(data, "json", encoding="utf-8")[1])) < 4 << 20
    assert got == want
    assert read(data, "json", skip_rows=1)[1] == want[1:]  # resumable on either side of it
    assert read(data, "json", skip_rows=2)[1] == want[2:]
    in_object = b'{"leads": ' + data + b', "meta": ' + json.dumps(big).encode() + b"}"
    assert read(in_object, "json")[1] == [RawRow(2, None, reason.replace(str(start), str(start + 10)))
                                          if r.error else r for r in want]


@pytest.mark.parametrize(
    "item",
    [
        [list(range(30))],
        {"a": [[[[[[1]]]]]], "b": "}, {" * 12},
        "a string with \\ \" }] and more than sixty-four bytes in all, escapes included",
        12345678901234567890123456789012345678901234567890123456789012345,
        {"deep": json.loads("[" * 70 + "1" + "]" * 70)},  # past the depth where runs are counted
    ],
)
def test_json_values_of_every_shape_over_the_limit(item: Any) -> None:
    text = json.dumps(item)
    data = f'[{{"a": "{"}" * 40}"}}, {text}, {{"b": 1}}]'.encode()
    assert len(text) > 64
    assert rows(data, "json", max_line_bytes=64) == [
        (1, {"a": "}" * 40}, None),
        (2, None, f"item is longer than 64 bytes ({len(text)} bytes from byte 52)"),
        (3, {"b": 1}, None),
    ]
    at_limit = rows(data, "json", max_line_bytes=len(text))[1]  # read
    if isinstance(item, dict):
        assert at_limit == (2, item, None)
    else:
        assert at_limit[2].startswith("not a JSON object")


_text = st.text(alphabet=st.sampled_from('a"\\{}[],: \n\t\x01é€😀'), max_size=6) | st.text(max_size=4)
_lead_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3),
    max_leaves=12,
)
_space = st.sampled_from(["", " ", "\n", "\r\n  ", "\t"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.dictionaries(_text, _lead_value, max_size=4) | _lead_value, max_size=6),
    st.lists(_space, min_size=20, max_size=20),
    st.sampled_from([None, 1]),
    st.booleans(),
    st.sampled_from([1, 2, 3, 7, 64]),
    st.sampled_from([8, 40, 1 << 20]),
    st.integers(0, 3),
)
def test_property_json_items_read_as_json_loads_reads_them(
    items: list[Any], spaces: list[str], indent: int | None, in_object: bool, step: int, limit: int,
    skip: int,
) -> None:
    ws = itertools.cycle(spaces)
    doc = next(ws) + ('{"meta": {"leads": [1]}, "leads":' + next(ws) if in_object else "") + "["
    want: list[RawRow] = []
    for n, item in enumerate(items, 1):
        doc += next(ws) + ("," + next(ws) if n > 1 else "")
        text = json.dumps(item, indent=indent, ensure_ascii=n % 2 == 0)
        size, start = len(text.encode()), len(doc.encode())
        doc += text
        if size > limit:
            want.append(RawRow(n, None, f"item is longer than {limit} bytes ({size} bytes from byte {start})"))
        elif isinstance(item, dict):
            want.append(RawRow(n, json.loads(text)))
        else:
            kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
            want.append(RawRow(n, None, f"not a JSON object (got {kind.get(type(item), 'null')})"))
    doc += next(ws) + "]" + next(ws) + (', "after": [' + next(ws) + "]}" if in_object else "") + next(ws)
    stream = NonSeekable(doc.encode(), step)  # every value cut across reads
    with open_reader(stream, "json", encoding="utf-8", max_line_bytes=limit, skip_rows=skip) as r:  # type: ignore[arg-type]
        assert list(r) == want[skip:]


def test_json_in_other_encodings() -> None:
    want = [RawRow(1, {"name": "Müller"})]
    assert read('[{"name": "Müller"}]'.encode("utf-16"), "json")[1] == want
    assert read('[{"name": "Müller"}]'.encode("cp1252"), "json")[1] == want


# ----------------------------------------------------------------------------- ndjson


def test_ndjson_lines() -> None:
    data = (
        b'{"number": "1", "p": 2}\n'
        b"\n"
        b'   {"number": "2"}  \r\n'
        b"[1, 2]\n"
        b"{broken\n"
        b'"str"\n'
        b"\xef\xbb\xbf\n"  # a stray BOM is not a lead either
        b'{"number": "3", "nested": {"f": 1.25}}'
    )
    got = rows(data, "ndjson")
    assert got[:4] == [
        (1, {"number": "1", "p": 2}, None),
        (3, {"number": "2"}, None),
        (4, None, "not a JSON object (got list)"),
        (5, None, got[3][2]),
    ]
    assert got[3][2].startswith("invalid JSON: ")
    assert got[4] == (6, None, "not a JSON object (got string)")
    assert got[-1] == (8, {"number": "3", "nested": {"f": 1.25}}, None)
    assert read(b'\xef\xbb\xbf{"a": 1}\n', "ndjson")[1] == [RawRow(1, {"a": 1})]


def test_ndjson_overlong_and_nul_lines() -> None:
    data = b'{"a": 1}\n{"b": "' + b"x" * 500 + b'"}\n{"c": "\x00"}\n{"d": 4}\n'
    assert rows(data, "ndjson", max_line_bytes=100, encoding="utf-8") == [
        (1, {"a": 1}, None),
        (2, None, "line is longer than 100 bytes"),
        (3, None, "NUL byte in line"),
        (4, {"d": 4}, None),
    ]


# ----------------------------------------------------------------------------- xlsx


def test_xlsx_happy_path(tmp_path: Path) -> None:
    sheet: list[list[Any]] = [
        ["number", " Priority ", "born", "seen", "agents", None],
        [4915112345678.0, 2.0, date(1990, 5, 17), datetime(2024, 1, 2, 13, 45), "a;b"],
        [None, None, None, None, None],
        ["+49 30 1234", 1.5, None, None, None, None],
        [None, None, None, None, None, None, None, "overflow"],
        [123, None, None, None, None, None, None],
    ]
    path = tmp_path / "leads.xlsx"
    path.write_bytes(xlsx_bytes(sheet, blank_rows_first=2))
    with open_reader(path, "xlsx") as r:
        assert r.header == ["number", "Priority", "born", "seen", "agents"]
        got = list(r)
    assert got == [
        RawRow(
            4,
            {
                "number": 4915112345678,
                "Priority": 2,
                "born": "1990-05-17",
                "seen": "2024-01-02T13:45:00",
                "agents": "a;b",
            },
        ),
        RawRow(6, {"number": "+49 30 1234", "Priority": 1.5, "born": None, "seen": None, "agents": None}),
        RawRow(7, None, "8 values but the header has 5 columns"),
        RawRow(8, {"number": 123, "Priority": None, "born": None, "seen": None, "agents": None}),
    ]
    assert type(got[0].values["number"]) is int  # type: ignore[index]
    # a stream works as well, and skip_rows counts yielded rows
    with open_reader(io.BytesIO(path.read_bytes()), "xlsx", skip_rows=2) as r:
        assert list(r) == got[2:]


def test_xlsx_broken(tmp_path: Path) -> None:
    good = xlsx_bytes([["number", "name"]] + [[f"+49{i}", "x" * 50] for i in range(300)])
    for data in (
        good[: len(good) // 2],
        good[:-30],
        b"PK\x03\x04" + b"\x00" * 100,
        b"number,name\n1,2\n",
        b"",
    ):
        assert "not a readable .xlsx workbook" in unreadable(data, "xlsx")
    path = tmp_path / "bad.xlsx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(FileUnreadable, match=r"not a readable \.xlsx"):
        open_reader(path, "xlsx")
    assert "empty" in unreadable(xlsx_bytes([]), "xlsx")
    assert "duplicate" in unreadable(xlsx_bytes([["a", "a"], [1, 2]]), "xlsx")


# ----------------------------------------------------------------------------- overlong lines


def test_overlong_lines_small_limit() -> None:
    data = b"a,b\n1,2\n" + b"x" * 50 + b"\n3,4\n" + b'"' + b"q" * 30 + b'",5\n6,7\n' + b"y" * 60
    assert rows(data, max_line_bytes=20) == [
        (2, {"a": "1", "b": "2"}, None),
        (3, None, "line is longer than 20 bytes"),
        (4, {"a": "3", "b": "4"}, None),
        (5, None, "line is longer than 20 bytes"),  # on the csv.reader path too
        (6, {"a": "6", "b": "7"}, None),
        (7, None, "line is longer than 20 bytes"),
    ]
    # exactly at the limit is fine, with \n or \r\n
    assert rows(b"a,b\n" + b"1," + b"z" * 18 + b"\r\n", max_line_bytes=20) == [
        (2, {"a": "1", "b": "z" * 18}, None)
    ]
    assert "longer than 20 bytes" in unreadable(b"h" * 40 + b"\n1\n", max_line_bytes=20)


def test_200mb_line_is_skipped_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    block = b"x" * (1 << 20)
    with path.open("wb") as f:
        f.write(b"number,name\n+491,a\n+492,")
        for _ in range(200):
            f.write(block)
        f.write(b"\n+493,c\n\n+494,d\n")
    got: list[RawRow] = []

    def run() -> None:
        with open_reader(path, "csv", encoding="utf-8") as r:
            got.extend(r)

    peak = peak_bytes(run)
    assert got == [
        RawRow(2, {"number": "+491", "name": "a"}),
        RawRow(3, None, "line is longer than 1048576 bytes"),
        RawRow(4, {"number": "+493", "name": "c"}),
        RawRow(6, {"number": "+494", "name": "d"}),
    ]
    assert peak < 20 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_overlong_quoted_field_spanning_lines() -> None:
    # an unterminated quote swallows the following lines until the field limit: each of
    # them is reported, then reading starts again on the next line
    data = b'a,b\n1,"open\n' + b"more text line\n" * 10 + b'2,3"\n4,5\n'
    got = rows(data, max_line_bytes=60)
    assert got[:2] == [
        (2, None, "malformed CSV: field larger than field limit (62) on line 6; "
                  "lines 2-6 are inside this row"),
        (3, None, "malformed CSV: inside the row of line 2 (field larger than field limit (62) "
                  "on line 6)"),
    ]
    assert [line for line, _, _ in got[:5]] == [2, 3, 4, 5, 6]
    assert got[-1] == (14, {"a": "4", "b": "5"}, None)
    assert [line for line, _, _ in got] == list(range(2, 15))


def test_a_quote_never_closed_rejects_every_line_it_swallows() -> None:
    lines = [b"number,note", *(b"+1415555%04d,ok" % i for i in range(2, 8)),
             b'+14155559404,"unterminated', b"+14155559405,next", b"", b'+14155559406,a; b',
             b"+14155559407,last"]
    got = rows(b"\n".join(lines) + b"\n")
    assert [line for line, _, _ in got] == list(range(2, len(lines) + 1))  # every line, once
    assert all(values is not None for _, values, _ in got[:6])
    assert got[6] == (8, None, "malformed CSV: a quoted field opened here is never closed; "
                               "lines 8-12 are inside it")
    assert got[7:] == [(n, None, "malformed CSV: inside the quoted field opened on line 8, "
                                 "which is never closed") for n in range(9, 13)]
    # the last line, without its line end: nothing swallowed, still not a row
    assert rows(b'number,note\n1,ok\n2,"open') == [
        (2, {"number": "1", "note": "ok"}, None),
        (3, None, "malformed CSV: a quoted field opened here is never closed"),
    ]


def test_a_stray_quote_closed_by_a_later_one_does_not_swallow_rows() -> None:
    data = b'number,note\n1,"stray\n2,plain\n3,"quoted"\n4,after\n'
    assert rows(data) == [
        (2, None, "malformed CSV: ',' expected after '\"' on line 4; lines 2-4 are inside this row"),
        (3, None, "malformed CSV: inside the row of line 2 (',' expected after '\"' on line 4)"),
        (4, None, "malformed CSV: inside the row of line 2 (',' expected after '\"' on line 4)"),
        (5, {"number": "4", "note": "after"}, None),
    ]
    # closed where a field may end, it makes a row of the wrong width: every line reported
    assert rows(b'number,note\n1,"stray\n2,end",x\n3,ok\n') == [
        (2, None, "3 values but the header has 2 columns; lines 2-3 are inside this row"),
        (3, None, "inside the row of line 2 (3 values but the header has 2 columns)"),
        (4, {"number": "3", "note": "ok"}, None),
    ]


def test_a_one_line_row_with_text_after_its_closing_quote_is_read_leniently() -> None:
    data = b'number,note\n1,"Smith" Jr\n2,"a" b,"c\n3,d\n'
    assert rows(data) == [
        (2, {"number": "1", "note": "Smith Jr"}, None),  # as spreadsheets read it
        (3, None, "malformed CSV: ',' expected after '\"'"),  # its last quote stays open
        (4, {"number": "3", "note": "d"}, None),
    ]


def test_a_quote_never_closed_over_many_read_blocks_resumes_exactly() -> None:
    # the swallowed lines run over several of the reader's 64 KiB blocks
    head = [b"number,note", *(b'+1415%07d,"quoted, %d"' % (i, i) for i in range(3000))]
    tail = [b"+1416%07d,plain %d" % (i, i) for i in range(8000)]
    data = b"\n".join([*head, b'+14169999999,"open', *tail]) + b"\n"
    assert len(data) > 4 * 65536
    full = read(data)[1]
    assert [r.line for r in full] == list(range(2, 2 + len(full)))
    assert len(full) == len(head) + len(tail)  # the header is not a row; the open one is
    opened = len(head) + 1
    assert full[opened - 2].error == (f"malformed CSV: a quoted field opened here is never closed; "
                                      f"lines {opened}-{opened + len(tail)} are inside it")
    assert all(r.values is None and f"opened on line {opened}," in (r.error or "")
               for r in full[opened - 1:])
    for k in (opened - 3, opened - 2, opened - 1, opened + 4000, len(full) - 1, len(full)):
        assert read(data, skip_rows=k)[1] == full[k:], k


# ----------------------------------------------------------------------------- skip_rows


def _csv_with_errors(quoted: bool) -> bytes:
    out = [b"number,name"]
    for i in range(1, 1201):
        if i % 97 == 0:
            out.append(b"1,2,3")  # too many cells
        elif i % 101 == 0:
            out.append(b"")
        elif quoted and i % 7 == 0:
            out.append(b'%d,"quoted\nover two lines"' % i)
        else:
            out.append(b"%d,name %d" % (i, i))
    return b"\n".join(out) + b"\n"


@pytest.mark.parametrize("quoted", [False, True])
def test_skip_rows_resumes_at_the_right_row(quoted: bool) -> None:
    data = _csv_with_errors(quoted)
    full = read(data)[1]
    assert any(r.error for r in full)
    for k in (0, 1, 96, 97, 500, len(full) - 1, len(full), len(full) + 5):
        assert read(data, skip_rows=k)[1] == full[k:], k


def test_skip_rows_other_formats() -> None:
    nd = b'{"a": 1}\n\n[2]\n{"a": 3}\n{bad\n{"a": 5}\n'
    full = read(nd, "ndjson")[1]
    assert len(full) == 5
    for k in range(7):
        assert read(nd, "ndjson", skip_rows=k)[1] == full[k:]
    js = b'[{"a": 1}, 2, {"a": 3}, {"a": 4}]'
    full = read(js, "json")[1]
    for k in range(6):
        assert read(js, "json", skip_rows=k)[1] == full[k:]
    big = b"a,b\n" + b"x" * 100 + b"\n1,2\n"
    assert read(big, max_line_bytes=50, skip_rows=1)[1] == [RawRow(3, {"a": "1", "b": "2"})]


# ----------------------------------------------------------------------------- big files, memory


def _write_csv(path: Path, n: int, *, quoted: bool = False) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_MINIMAL)
        w.writerow(["number", "priority", "agents", "external_id", "name"])
        for i in range(n):
            w.writerow([f"+4915112{i:06d}", i % 10, "alice;bob", f"ext-{i}", f"Name {i}"])


@pytest.mark.parametrize("quoted", [False, True])
def test_many_rows_line_numbers_and_flat_memory(tmp_path: Path, quoted: bool) -> None:
    small, big = tmp_path / "s.csv", tmp_path / "b.csv"
    _write_csv(small, 10_000, quoted=quoted)
    _write_csv(big, 100_000, quoted=quoted)
    seen: list[int] = []

    def check(path: Path) -> None:
        with open_reader(path, "csv", encoding="utf-8") as r:
            for expected, row in enumerate(r, 2):
                assert row.line == expected
                assert row.values is not None
                assert row.values["external_id"] == f"ext-{expected - 2}"
            seen.append(expected)

    p_small = peak_bytes(lambda: check(small))
    p_big = peak_bytes(lambda: check(big))
    assert seen == [10_001, 100_001]
    assert p_small < 4 << 20
    assert p_big < p_small + (1 << 20), (p_small, p_big)


def test_mixed_file_switches_to_csv_reader_midway(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    with path.open("wb") as f:
        f.write(b"number,note\n")
        for i in range(30_000):  # well past the first read block
            f.write(b"%d,plain\n" % i)
        f.write(b'30000,"quoted, with comma"\n30001,"two\nlines"\n30002,plain\n')
    got = list(open_reader(path, "csv"))
    assert len(got) == 30_003
    assert got[29_999] == RawRow(30_001, {"number": "29999", "note": "plain"})
    assert got[-3:] == [
        RawRow(30_002, {"number": "30000", "note": "quoted, with comma"}),
        RawRow(30_003, {"number": "30001", "note": "two\nlines"}),
        RawRow(30_005, {"number": "30002", "note": "plain"}),
    ]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_flat_memory(tmp_path: Path, fmt: str) -> None:
    def write(path: Path, n: int) -> None:
        with path.open("wb") as f:
            f.write(b"[" if fmt == "json" else b"")
            for i in range(n):
                sep = b"," if fmt == "json" and i else b""
                f.write(sep + b'{"number": "+49%d", "priority": %d, "name": "N"}\n' % (i, i % 9))
            f.write(b"]" if fmt == "json" else b"")

    small, big = tmp_path / "s", tmp_path / "b"
    write(small, 10_000)
    write(big, 50_000)
    counts: list[int] = []
    p_small = peak_bytes(lambda: counts.append(drain(small, fmt, encoding="utf-8")))
    p_big = peak_bytes(lambda: counts.append(drain(big, fmt, encoding="utf-8")))
    assert counts == [10_000, 50_000]
    assert p_big < p_small + (1 << 20), (p_small, p_big)


def test_reader_closes_what_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n1,2\n3,4\n")
    with open_reader(path, "csv") as r:
        it = iter(r)
        assert next(it).line == 2
        raw = r._raw  # type: ignore[attr-defined]
    assert raw.closed
    stream = io.BytesIO(b"a,b\n1,2\n")
    with open_reader(stream, "csv") as r:
        list(r)
    assert not stream.closed  # the caller's stream stays the caller's


# ----------------------------------------------------------------------------- properties

_names = (
    st.text(alphabet=string.ascii_letters + string.digits + " _-.()#", min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
_values = st.text(alphabet=string.printable + "äöüßéΩ€", max_size=20)


@st.composite
def _tables(draw: st.DrawFn) -> tuple[str, list[str], list[list[str]]]:
    names = draw(st.lists(_names, min_size=1, max_size=6, unique=True))
    delim = draw(st.sampled_from([",", ";", "\t"])) if len(names) > 1 else ","
    table = draw(st.lists(st.lists(_values, min_size=len(names), max_size=len(names)), max_size=30))
    return delim, names, table


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _tables(), st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]), st.sampled_from(["\r\n", "\n"])
)
def test_property_csv_round_trip(
    table: tuple[str, list[str], list[list[str]]], encoding: str, newline: str
) -> None:
    delim, names, body = table
    if encoding == "cp1252":
        body = [[v.replace("Ω", "O") for v in row] for row in body]
    if newline == "\n":  # csv.writer then leaves a lone \r unquoted: unreadable by any reader
        body = [[v.replace("\r", "") for v in row] for row in body]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delim, lineterminator=newline)
    writer.writerow(names)
    writer.writerows(body)
    header, got = read(buf.getvalue().encode(encoding))
    assert header == names
    want = [dict(zip(names, row, strict=True)) for row in body if any(row)]
    assert [r.values for r in got] == want
    assert all(r.error is None for r in got)
    assert all(a.line < b.line for a, b in itertools.pairwise(got))


_jsonish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
    max_leaves=8,
)


def _mangled(data: bytes, cut: int, junk: bytes) -> bytes:
    cut = cut % (len(data) + 1)
    return data[:cut] + junk + data[cut:]


_inputs = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(lambda s: s.encode("utf-8")),
    st.builds(lambda v: json.dumps(v).encode(), _jsonish),
    st.builds(
        _mangled,
        st.builds(lambda v: json.dumps({"leads": v}).encode(), _jsonish),
        st.integers(0, 400),
        st.binary(max_size=3),
    ),
    st.builds(_mangled, st.just(b'number;name\n1;"a"\n"2;b\n\n'), st.integers(0, 30), st.binary(max_size=4)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _inputs,
    st.sampled_from([None, "utf-8", "cp1252", "utf-16"]),
    st.sampled_from([8, 64, 1 << 20]),
    st.integers(0, 3),
)
def test_property_any_bytes_only_file_unreadable(
    data: bytes, encoding: str | None, limit: int, skip: int
) -> None:
    for fmt in FORMATS:
        try:
            with open_reader(
                io.BytesIO(data), fmt, encoding=encoding, max_line_bytes=limit, skip_rows=skip
            ) as r:
                for row in r:
                    assert isinstance(row.line, int)
                    assert row.line >= 1
                    assert (row.values is None) != (row.error is None)
        except FileUnreadable:
            pass
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f"
        path.write_bytes(data)
        for fmt in FORMATS:
            try:
                fingerprint(path, fmt)
            except FileUnreadable:
                pass


def test_non_seekable_streams() -> None:
    data = "number,name\n1,Müller\n".encode("cp1252")
    with open_reader(NonSeekable(data), "csv") as r:  # type: ignore[arg-type]
        assert list(r) == [RawRow(2, {"number": "1", "name": "Müller"})]
    xdata = xlsx_bytes([["number"], [5]])
    with open_reader(NonSeekable(xdata), "xlsx") as r:  # type: ignore[arg-type]
        assert list(r) == [RawRow(2, {"number": 5})]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_a_lone_surrogate_escape_is_read_as_the_replacement_character(fmt: str) -> None:
    """Valid JSON a CRM writes when it cuts an emoji in half: orjson refuses it, ijson (and
    the API) read it; the file must not go to failed/ for it."""
    item = b'{"number": "+14155550100", "note": "caf\\ud83d"}'
    data = b"[" + item + b', {"number": "+14155550101"}]' if fmt == "json" else item + b"\n"
    got = rows(data, fmt)
    assert got[0][1] == {"number": "+14155550100", "note": "caf\ufffd"} and got[0][2] is None


def test_a_multi_line_field_with_blanks_after_its_closing_quote_is_read() -> None:
    """Strict mode rejected it (two rows, the lead not dialed) for a space after the quote."""
    data = b'number,address,note\n1,"12 Main St\nApt 4" ,x\n2,"a\nb"\t\n3,ok,y\n'
    assert rows(data) == [
        (2, {"number": "1", "address": "12 Main St\nApt 4", "note": "x"}, None),
        (4, {"number": "2", "address": "a\nb", "note": ""}, None),
        (6, {"number": "3", "address": "ok", "note": "y"}, None),
    ]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_an_integer_past_64_bits_is_read_exactly(fmt: str) -> None:
    """orjson reads it as a float: a CRM's 23-digit id came out as 1.2345678901234568e+22."""
    big = 12345678901234567890123
    item = b'{"number": "+14155550100", "external_id": %d, "score": -9223372036854775809}' % big
    data = b"[" + item + b', {"number": "+14155550101", "n": 7}]' if fmt == "json" else item + b"\n"
    got = rows(data, fmt)
    assert got[0][1] == {"number": "+14155550100", "external_id": big, "score": -9223372036854775809}
    assert type(got[0][1]["external_id"]) is int and got[0][2] is None


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_nan_and_infinity_are_not_json(fmt: str) -> None:
    """The standard library reads them (the lenient path): a row (or file) orjson refused
    for them stays refused."""
    item = b'{"number": "+14155550100", "score": NaN, "note": "caf\\ud83d"}'
    if fmt == "ndjson":
        assert rows(item + b"\n", fmt)[0][2].startswith("invalid JSON")
    else:
        assert "invalid JSON" in unreadable(b"[" + item + b"]", fmt)


@pytest.mark.parametrize("depth", [300, 1010])
def test_a_value_nested_deeper_than_can_be_stored_is_an_invalid_row(depth: int) -> None:
    """orjson reads 1,024 levels but writes 255, and the fallback hit Python's recursion
    limit: the worker failed and the file was retried forever."""
    import io

    from dialer.intake.pipeline import ParseJob, iter_chunks
    from tests.intake.test_leads import RULES

    deep = b'{"number": "+14155550100", "x": ' + b"[" * depth + b"]" * depth + b"}\n"
    data = deep + b'{"number": "+14155550101", "y": ' + b"[" * 200 + b"]" * 200 + b"}\n"
    job = ParseJob(fmt="ndjson", batch_id="b", rules=RULES, chunk_rows=10)
    chunks = [c for c in iter_chunks(io.BytesIO(data), job) if c.rows]
    assert sum(c.rows for c in chunks) == 2 and sum(c.invalid for c in chunks) == 1
    assert "a value is nested more than 255 levels deep" in b"".join(c.data for c in chunks).decode()


def test_an_integer_past_64_bits_inside_a_list_is_written_exactly() -> None:
    """orjson cannot write it back: the intake worker failed and the file was retried forever."""
    import io

    from dialer.intake.pipeline import ParseJob, iter_chunks
    from tests.intake.test_leads import RULES

    data = b'{"number": "+14155550100", "tags": ["vip", 123456789012345678901234]}\n{"number": "+14155550101"}\n'
    job = ParseJob(fmt="ndjson", batch_id="b", rules=RULES, chunk_rows=10)
    chunks = [c for c in iter_chunks(io.BytesIO(data), job) if c.rows]
    assert sum(c.rows for c in chunks) == 2 and sum(c.invalid for c in chunks) == 0
    assert '"tags":"[\\\\"vip\\\\",123456789012345678901234]"' in b"".join(c.data for c in chunks).decode()


@pytest.mark.parametrize("data", [
    b'number,address,note\n1,"12 Main St\nApt 4" ,x',  # the file's last row, no line end
    b'number,address,note\n1,"a ""b"" , c\nApt 4" ,x\n',
    b'number,address,note\n1,"He said ""hi"" \nthen left" ,x\n',
])
def test_forgiving_blanks_after_a_closing_quote_keeps_the_quoted_text(data: bytes) -> None:
    """Only the blanks after the closing quote go: those inside the quotes are the cell's."""
    want = data.split(b",", 3)[3].rsplit(b'" ,', 1)[0][1:].decode().replace('""', '"')
    assert rows(data) == [(2, {"number": "1", "address": want, "note": "x"}, None)]


def test_forgiving_blanks_after_a_closing_quote_does_not_depend_on_where_the_file_is_cut() -> None:
    """The row read again may begin in the previous 64 KiB piece of text."""
    head = b"number,address,note\n"
    for at in range(65_500, 65_560):
        data = head + b"9," + b"z" * (at - len(head) - 6) + b',q\n1,"12 Main St\nApt 4" ,x\n'
        assert rows(data)[-1] == (3, {"number": "1", "address": "12 Main St\nApt 4", "note": "x"}, None), at


def _rewritten_sheet(data: bytes, *swaps: tuple[bytes, bytes]) -> bytes:
    """``data``, a workbook, with its first sheet's XML edited (as a hand-made file may be)."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            part = src.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                for old, new in swaps:
                    part = part.replace(old, new)
            dst.writestr(item, part)
    return out.getvalue()


@pytest.mark.timeout(60)  # openpyxl's iter_rows made up every row in the gap: days
def test_a_row_numbered_far_past_the_previous_one_is_read_at_once() -> None:
    data = xlsx_bytes([["number", "name"], ["+14155550100", "Ann"], ["+14155550101", "Bob"]])
    last = _rewritten_sheet(data, (b'<row r="3"', b'<row r="1048576"'), (b'"A3"', b'"A1048576"'),
                            (b'"B3"', b'"B1048576"'))
    assert rows(last, "xlsx") == [(2, {"number": "+14155550100", "name": "Ann"}, None),
                                  (1_048_576, {"number": "+14155550101", "name": "Bob"}, None)]
    # no workbook goes further (and calls.line could not hold it): the file is unreadable
    past = _rewritten_sheet(data, (b'<row r="3"', b'<row r="999999999999"'), (b'"A3"', b'"A999999999999"'),
                            (b'"B3"', b'"B999999999999"'))
    assert unreadable(past, "xlsx") == ("not a readable .xlsx workbook: row 999,999,999,999 is past a "
                                        "worksheet's last row (1,048,576)")


@pytest.mark.timeout(60)
def test_a_cell_far_to_the_right_costs_no_more_than_its_bytes() -> None:
    """Each row was padded out to its last cell's column; a header that wide is refused."""
    data = xlsx_bytes([["number", "name"]] + [["+14155550100", "Ann", " "]] * 2000)  # a blank cell
    far = _rewritten_sheet(data, *((f'"C{i}"'.encode(), f'"XFD{i}"'.encode()) for i in range(2, 2002)))
    assert rows(far, "xlsx") == rows(data, "xlsx")  # no cell there: nothing changes
    wide = xlsx_bytes([["number", "name"], ["+14155550100", "Ann", "x"]])
    wide = _rewritten_sheet(wide, (b'"C2"', b'"XFD2"'))
    assert rows(wide, "xlsx") == [(2, None, "16384 values but the header has 2 columns")]
    header = _rewritten_sheet(xlsx_bytes([["number", "name", "far"]]), (b'"C1"', b'"XFD1"'))
    assert "reaches column 16,384, past the 2,000 columns" in unreadable(header, "xlsx")
