"""Streaming readers: a lead file (csv, json, ndjson, xlsx) in, raw rows out.

One module per format (``csvfile``, ``jsonfile`` for json and ndjson, ``xlsxfile``);
``common`` holds the shared types, ``text`` the bytes → encoding → lines layer and
``jsonscan`` where a JSON value ends. ``open_reader`` picks the reader.

Memory stays flat whatever the file size: files are read in fixed-size blocks, a
line (or a JSON item) never grows past ``max_line_bytes`` in memory (longer ones are
skipped in bounded chunks and reported as one row error), and nothing keeps a list of
rows.

Row numbering (``RawRow.line``):

* csv / ndjson: the 1-based physical line in the file (the CSV header is line 1
  when it is the first line).  A quoted CSV record spanning several lines is
  numbered by the line where it *starts*; one that is rejected (a quote never
  closed, say) is reported on each of its lines, so every line is accounted for.
  ``\\r\\n``, ``\\n`` and (CSV only, in files that use it) a lone ``\\r`` end a line.
* xlsx: the 1-based row number of the first worksheet.
* json: the 1-based position of the item in the leads array.

``skip_rows=N`` skips the first N rows that would have been yielded (data rows
and row errors alike: exactly what a consumer counted before a crash), without
building their dicts.

The CSV hot path reads bytes in blocks, cuts them on the last newline, decodes
each piece once, and, while the file has no quote character, splits lines and
cells with ``str.split`` (equivalent to the ``csv`` module for unquoted data and
about twice as fast).  From the first piece containing a quote (or a NUL, or a
lone ``\\r``) on, the rest of the file goes through one ``csv.reader``.  Each
row's dict is built by a small function generated for the header (a dict display
is about twice as fast as ``dict(zip(header, row))``).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from dialer.intake.readers.common import (
    FORMATS,
    FileId,
    Fingerprint,
    RawRow,
    RowBlock,
    RowReader,
    detect_format,
)
from dialer.intake.readers.csvfile import CsvReader
from dialer.intake.readers.jsonfile import JsonReader, NdjsonReader
from dialer.intake.readers.text import (
    check_still_named,
    check_unchanged,
    decide_encoding,
    fingerprint,
    folder_fd,
    open_file,
    open_source,
    seekable,
    spool_stream,
)
from dialer.intake.readers.xlsxfile import XlsxReader, unpacked_size

__all__ = [
    "FORMATS",
    "FileId",
    "Fingerprint",
    "RawRow",
    "RowBlock",
    "RowReader",
    "check_still_named",
    "check_unchanged",
    "detect_format",
    "fingerprint",
    "folder_fd",
    "open_file",
    "open_reader",
    "unpacked_size",
]


def open_reader(
    source: Path | BinaryIO,
    fmt: str,
    *,
    encoding: str | None = None,
    max_line_bytes: int = 1 << 20,
    skip_rows: int = 0,
) -> RowReader:
    """A reader over ``source`` (a path, or a binary file object such as ``io.BytesIO``).

    ``encoding=None`` decides it like ``fingerprint`` does (a seekable stream is scanned
    then rewound; a non-seekable one is spooled to a temporary file first).  Pass the
    fingerprint's encoding when you have it: it saves a pass over the file.  Header
    problems and unreadable files raise ``FileUnreadable`` here or while iterating.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    raw, owned = open_source(source)
    try:
        if fmt == "xlsx":
            if not seekable(raw):
                spooled = spool_stream(raw, None)
                if owned:
                    raw.close()
                raw, owned = spooled, True
            return XlsxReader(raw, owned, skip_rows)
        if encoding is None:
            decided, encoding, spooled_copy = decide_encoding(raw)
            if spooled_copy:
                if owned:
                    raw.close()
                raw, owned = decided, True
        if fmt == "csv":
            return CsvReader(raw, owned, encoding, max_line_bytes, skip_rows)
        if fmt == "ndjson":
            return NdjsonReader(raw, owned, encoding, max_line_bytes, skip_rows)
        return JsonReader(raw, owned, encoding, max_line_bytes, skip_rows)
    except BaseException:
        if owned:
            raw.close()
        raise
