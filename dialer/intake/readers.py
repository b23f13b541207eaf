"""Streaming readers: a lead file (csv, json, ndjson, xlsx) in, raw rows out.

Memory stays flat whatever the file size: files are read in fixed-size blocks, a
line never grows past ``max_line_bytes`` in memory (longer lines are skipped in
bounded chunks and reported as one row error), and nothing keeps a list of rows.

Row numbering (``RawRow.line``):

* csv / ndjson: the 1-based physical line in the file (the CSV header is line 1
  when it is the first line).  A quoted CSV record spanning several lines is
  numbered by the line where it *starts*.  ``\\r\\n``, ``\\n`` and (CSV only, in
  files that use it) a lone ``\\r`` end a line.
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

import codecs
import csv
import hashlib
import io
import re
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import chain, repeat
from pathlib import Path
from types import TracebackType
from typing import Any, AnyStr, BinaryIO, Self

import ijson
import orjson

from dialer.errors import FileUnreadable

__all__ = [
    "FORMATS",
    "Fingerprint",
    "RawRow",
    "RowReader",
    "detect_format",
    "fingerprint",
    "open_reader",
]

FORMATS = ("csv", "json", "ndjson", "xlsx")
TEXT_FORMATS = frozenset({"csv", "json", "ndjson"})

_EXTENSIONS = {
    ".csv": "csv",
    ".txt": "csv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".xlsx": "xlsx",
}

_HASH_BLOCK = 1 << 20  # fingerprint / encoding scan
_TEXT_BLOCK = 1 << 16  # csv / ndjson reading (cache-friendly; lines may span blocks)
_JSON_BLOCK = 1 << 16  # json: small enough for useful error offsets
_NUL_WINDOW = 8192
_SPOOL_MAX = 8 << 20  # non-seekable streams are spooled to disk past this size
_MAX_GENERATED_COLUMNS = 1000


def _ijson_backend() -> Any:
    for name in ("yajl2_c", "yajl2_cffi", "yajl2"):
        try:
            return ijson.get_backend(name)
        except Exception:  # noqa: S112 - backend not built for this platform: try the next
            continue
    return ijson


_IJSON = _ijson_backend()


def detect_format(name: str) -> str | None:
    """By extension, case-insensitive: .csv/.txt→csv, .json→json, .ndjson/.jsonl→ndjson,
    .xlsx→xlsx; else None."""
    dot = name.rfind(".")
    if dot < 0:
        return None
    return _EXTENSIONS.get(name[dot:].lower())


@dataclass(slots=True)
class RawRow:
    """One input row as read, before any validation."""

    line: int
    values: dict[str, Any] | None
    error: str | None = None


@dataclass(slots=True)
class Fingerprint:
    sha256: str
    size: int
    encoding: str | None


# --------------------------------------------------------------------------- sources


class _EncodingSniffer:
    """Fed a file's blocks in order, decides its text encoding.

    A UTF-8 BOM → ``utf-8-sig``; a UTF-16 BOM → ``utf-16``; bytes that are not valid
    UTF-8 anywhere in the file → ``cp1252``; else ``utf-8``.  NUL bytes in the first
    8 KiB (without a UTF-16 BOM) mean a binary file.
    """

    __slots__ = ("_nul_check", "_pending", "_seen", "decided")

    def __init__(self) -> None:
        self.decided: str | None = None
        self._pending = b""
        self._seen = 0
        self._nul_check = True

    def feed(self, block: bytes) -> None:
        if self._seen == 0 and block:
            if block.startswith(codecs.BOM_UTF8):
                self.decided = "utf-8-sig"
            elif block[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                self.decided = "utf-16"
                self._nul_check = False
        if self._nul_check and self._seen < _NUL_WINDOW:
            if b"\x00" in block[: _NUL_WINDOW - self._seen]:
                raise FileUnreadable("binary file, not CSV/JSON text (NUL bytes near the start)")
        self._seen += len(block)
        if self.decided is not None:
            return
        data = self._pending + block if self._pending else block
        if data.isascii():
            self._pending = b""
            return
        try:
            _, consumed = codecs.utf_8_decode(data, "strict", False)
        except UnicodeDecodeError:
            self.decided = "cp1252"
            return
        self._pending = data[consumed:]

    @property
    def done(self) -> bool:
        """Nothing later in the file can change the decision."""
        return self.decided is not None and self._seen >= _NUL_WINDOW

    def finish(self) -> str:
        if self._seen == 0:
            raise FileUnreadable("file is empty")
        if self.decided is not None:
            return self.decided
        # a multi-byte sequence cut by the end of the file is not UTF-8 either
        return "cp1252" if self._pending else "utf-8"


def _blocks(raw: BinaryIO, size: int) -> Iterator[bytes]:
    read = raw.read
    while True:
        try:
            block = read(size)
        except OSError as e:
            raise FileUnreadable(f"read error: {e.strerror or e}") from e
        if not block:
            return
        yield block


def fingerprint(path: Path, fmt: str) -> Fingerprint:
    """One streaming pass (1 MiB blocks): sha256 of the bytes and, for text formats, the
    encoding.  Raises ``FileUnreadable`` for an empty file or a text file that looks binary."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    text = fmt in TEXT_FORMATS
    h = hashlib.sha256()
    sniffer = _EncodingSniffer()
    size = 0
    try:
        f = open(path, "rb", buffering=0)
    except OSError as e:
        raise FileUnreadable(f"cannot open file: {e.strerror or e}") from e
    with f:
        for block in _blocks(f, _HASH_BLOCK):
            h.update(block)
            size += len(block)
            if text:
                sniffer.feed(block)
    if size == 0:
        raise FileUnreadable("file is empty")
    return Fingerprint(h.hexdigest(), size, sniffer.finish() if text else None)


def _seekable(raw: BinaryIO) -> bool:
    try:
        return bool(raw.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _spool(raw: BinaryIO, sniffer: _EncodingSniffer | None) -> BinaryIO:
    """Copy a non-seekable stream to a (disk-backed past 8 MiB) temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX)
    try:
        for block in _blocks(raw, _HASH_BLOCK):
            if sniffer is not None:
                sniffer.feed(block)
            spool.write(block)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool  # type: ignore[return-value]


def _decide_encoding(raw: BinaryIO) -> tuple[BinaryIO, str, bool]:
    """Scan the stream for its encoding and rewind it: (stream to read, encoding, stream is
    a spool of ours)."""
    sniffer = _EncodingSniffer()
    if not _seekable(raw):
        spool = _spool(raw, sniffer)
        try:
            return spool, sniffer.finish(), True
        except BaseException:
            spool.close()
            raise
    pos = raw.tell()
    for block in _blocks(raw, _HASH_BLOCK):
        sniffer.feed(block)
        if sniffer.done:
            break
    raw.seek(pos)
    return raw, sniffer.finish(), False


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise FileUnreadable(f"unknown text encoding {encoding!r}") from None


def _is_utf8(codec: str) -> bool:
    return codec in ("utf-8", "utf-8-sig")


def _byte_splittable(codec: str) -> bool:
    """Lines can be cut on the byte 0x0A before decoding (ASCII-compatible codecs)."""
    return _is_utf8(codec) or "\n".encode(codec) == b"\n"


def _strip_bom(blocks: Iterator[bytes]) -> Iterator[bytes]:
    first = next(blocks, None)
    if first is None:
        return
    while len(first) < 3 and first == codecs.BOM_UTF8[: len(first)]:
        more = next(blocks, None)
        if more is None:
            break
        first += more
    if first.startswith(codecs.BOM_UTF8):
        first = first[3:]
    if first:
        yield first
    yield from blocks


# --------------------------------------------------------------------------- lines


def _split_lines(blocks: Iterable[AnyStr], limit: int, nl: AnyStr, cr: AnyStr) -> Iterator[AnyStr | None]:
    """Regroup blocks into pieces made of whole lines (each ends with ``nl`` but the last
    one of the file may not).  A line whose content is longer than ``limit`` is never held
    in memory: it is skipped block by block and stands as one ``None`` in the output."""
    empty = nl[:0]
    pending = empty
    skipping = False
    for block in blocks:
        if skipping:
            i = block.find(nl)
            if i < 0:
                continue
            block = block[i + 1 :]
            skipping = False
        data = pending + block if pending else block
        j = data.rfind(nl)
        if j < 0:
            pending = data
        else:
            body = data[: j + 1]
            pending = data[j + 1 :]
            if len(body) > limit + 1:
                yield from _drop_overlong(body, limit, nl, cr)
            else:
                yield body
        if len(pending) > limit + 1:  # +1: the \r of a \r\n whose \n is still to come
            pending = empty
            skipping = True
            yield None
    if pending:
        if len(pending) - pending.endswith(cr) > limit:
            yield None
        else:
            yield pending


def _drop_overlong(body: AnyStr, limit: int, nl: AnyStr, cr: AnyStr) -> Iterator[AnyStr | None]:
    lines = body.split(nl)
    lines.pop()  # body ends with nl
    if max(map(len, lines)) <= limit:
        yield body
        return
    good: list[AnyStr] = []
    for line in lines:
        if len(line) - line.endswith(cr) > limit:
            if good:
                good.append(nl[:0])
                yield nl.join(good)
                good = []
            yield None
        else:
            good.append(line)
    if good:
        good.append(nl[:0])
        yield nl.join(good)


def _text_pieces(raw: BinaryIO, encoding: str, limit: int) -> Iterator[str | None]:
    """Decoded pieces of whole lines; ``None`` for each line longer than ``limit`` bytes."""
    codec = _codec(encoding)
    limit = max(limit, 1)
    if _byte_splittable(codec):
        blocks = _blocks(raw, _TEXT_BLOCK)
        if _is_utf8(codec):
            blocks = _strip_bom(blocks)
            codec = "utf-8"
        for piece in _split_lines(blocks, limit, b"\n", b"\r"):
            yield None if piece is None else piece.decode(codec, "replace")
        return
    # UTF-16/32 and the like: decode first, count the limit in characters
    unit = max(1, len("\n\n".encode(codec)) - len("\n".encode(codec)))

    yield from _split_lines(_decoded(raw, codec, _TEXT_BLOCK), max(1, limit // unit), "\n", "\r")


def _decoded(raw: BinaryIO, codec: str, size: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(codec)("replace")
    try:
        for block in _blocks(raw, size):
            text = decoder.decode(block)
            if text:
                yield text
        tail = decoder.decode(b"", True)
    except UnicodeError as e:  # e.g. "UTF-16 stream does not start with BOM"
        raise FileUnreadable(f"cannot decode the file as {codec}: {e}") from None
    if tail:
        yield tail


# --------------------------------------------------------------------------- readers


class RowReader(ABC):
    """Iterate for ``RawRow``s; close (or use as a context manager) when done."""

    fmt: str
    header: list[str] | None

    def __init__(self, fmt: str, raw: BinaryIO, owned: bool, skip_rows: int) -> None:
        self.fmt = fmt
        self.header = None
        self._raw = raw
        self._owned = owned
        self._skip = max(0, skip_rows)
        self._it: Iterator[RawRow] | None = None
        self._closed = False

    @abstractmethod
    def _rows(self) -> Iterator[RawRow]: ...

    def __iter__(self) -> Iterator[RawRow]:
        if self._it is None:
            self._it = iter(()) if self._closed else self._rows()
        return self._it

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        it = self._it
        if it is not None and hasattr(it, "close"):
            it.close()
        if self._owned:
            self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _unique_names(names: list[str], what: str) -> list[str]:
    """Trailing unnamed columns are dropped (spreadsheet padding); an unnamed column in
    the middle is called ``column_<n>``; duplicates make the file unreadable."""
    while names and not names[-1]:
        names.pop()
    names = [n or f"column_{i}" for i, n in enumerate(names, 1)]
    dups = [n for n, c in Counter(names).items() if c > 1]
    if dups:
        listed = ", ".join(repr(n) for n in dups)
        raise FileUnreadable(f"duplicate column names in the {what}: {listed}")
    return names


def _dict_builder(names: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """``row -> {names[0]: row[0], ...}``, generated for the header: a dict display is
    about twice as fast as ``dict(zip(names, row))``.  Only indices are interpolated into
    the source; the names themselves are passed as variables."""
    if len(names) > _MAX_GENERATED_COLUMNS:
        keys = tuple(names)
        return lambda row: dict(zip(keys, row, strict=False))
    items = ", ".join(f"_k{i}: row[{i}]" for i in range(len(names)))
    namespace: dict[str, Any] = {f"_k{i}": n for i, n in enumerate(names)}
    exec(f"def build(row):\n    return {{{items}}}\n", namespace)  # noqa: S102
    builder: Callable[[Sequence[Any]], dict[str, Any]] = namespace["build"]
    return builder


_QUOTED = re.compile(r'"[^"]*"')
_SENTINEL = "\x00"  # stands for an unreadable physical line inside the csv.reader feed
_OVERLONG, _NUL = "L", "N"


class _CsvReader(RowReader):
    def __init__(
        self, raw: BinaryIO, owned: bool, encoding: str, max_line_bytes: int, skip_rows: int
    ) -> None:
        super().__init__("csv", raw, owned, skip_rows)
        self._max = max_line_bytes
        self._overlong = f"line is longer than {max_line_bytes} bytes"
        # A quoted field may span lines: the field limit bounds what an unbalanced quote
        # can swallow.  It is process-wide; every reader sets it to its own line limit.
        csv.field_size_limit(max_line_bytes + 2)
        pieces = _text_pieces(raw, encoding, max_line_bytes)
        self._line = 0  # physical lines consumed
        seen_any = False
        for piece in pieces:
            seen_any = True
            if piece is None:
                raise FileUnreadable(
                    f"no CSV header: line {self._line + 1} is longer than {max_line_bytes} bytes"
                )
            pos = 0
            for text in io.StringIO(piece, newline=""):
                self._line += 1
                pos += len(text)
                names = self._parse_header(text.rstrip("\r\n"))
                if names is not None:
                    self.header = names
                    rest = piece[pos:]
                    self._pieces: Iterator[str | None] = chain((rest,), pieces) if rest else pieces
                    return
        if not seen_any:
            raise FileUnreadable("file is empty")
        raise FileUnreadable("no CSV header: the file has only empty lines")

    def _parse_header(self, text: str) -> list[str] | None:
        if not text.strip():
            return None
        if "\x00" in text:
            raise FileUnreadable(f"NUL byte in the header line (line {self._line})")
        bare = _QUOTED.sub("", text)
        counts = [bare.count(d) for d in (",", ";", "\t")]
        self._delim = (",", ";", "\t")[counts.index(max(counts))]
        cells = next(csv.reader([text], delimiter=self._delim), [])
        names = [c.strip().lstrip("\ufeff").strip() for c in cells]
        if not any(names):
            return None  # a line of bare delimiters is an empty line
        names = _unique_names(names, "CSV header")
        self._width = len(names)
        self._build = _dict_builder(names)
        return names

    # -- rows

    def _odd(self, line: int, row: list[str]) -> RawRow | None:
        """A row whose cell count differs from the header's (or whose first cell is
        empty): blank (every cell empty) → None; short → padded with ""; long → error
        unless only empty cells overflow (trailing delimiters, as spreadsheets write)."""
        w = self._width
        n = len(row)
        if n and row[0][:1] == _SENTINEL:
            code = row[0][1:2]
            return RawRow(line, None, self._overlong if code == _OVERLONG else "NUL byte in line")
        if not any(row):
            return None  # a blank line, or bare delimiters (spreadsheet padding)
        if n < w:
            return RawRow(line, self._build(row + [""] * (w - n)))
        if n > w:
            while n > w and not row[n - 1]:
                n -= 1
            if n > w:
                return RawRow(line, None, f"{n} values but the header has {w} columns")
            row = row[:w]
        return RawRow(line, self._build(row))

    def _rows(self) -> Iterator[RawRow]:
        w = self._width
        build = self._build
        odd = self._odd
        delim = self._delim
        split = str.split
        skip = self._skip
        line = self._line
        pieces = self._pieces
        for piece in pieces:
            if piece is None:
                line += 1
                if skip:
                    skip -= 1
                else:
                    yield RawRow(line, None, self._overlong)
                continue
            if w > 1 and '"' not in piece and "\x00" not in piece:
                if "\r" in piece:
                    crlf = piece.count("\r\n")
                    if piece.count("\r") != crlf:
                        yield from self._csv_rows(chain((piece,), pieces), line, skip)
                        return
                    piece = piece.replace("\r\n", "\n")
                lines = piece.split("\n")
                if not lines[-1]:
                    lines.pop()
                for row in map(split, lines, repeat(delim)):
                    line += 1
                    if len(row) == w and row[0]:
                        if skip:
                            skip -= 1
                        else:
                            yield RawRow(line, build(row))
                    else:
                        raw_row = odd(line, row)
                        if raw_row is not None:
                            if skip:
                                skip -= 1
                            else:
                                yield raw_row
                continue
            yield from self._csv_rows(chain((piece,), pieces), line, skip)
            return

    def _feed(self, piece: str | None) -> Iterable[str]:
        """Lines for csv.reader; an unreadable line becomes a sentinel line that parses
        into more cells than the header has, starting with NUL (never in real data)."""
        if piece is None:
            return (_SENTINEL + _OVERLONG + self._delim * self._width,)
        if "\x00" not in piece:
            return io.StringIO(piece, newline="")
        nul = _SENTINEL + _NUL + self._delim * self._width
        return [nul if "\x00" in text else text for text in io.StringIO(piece, newline="")]

    def _csv_rows(self, pieces: Iterator[str | None], base: int, skip: int) -> Iterator[RawRow]:
        w = self._width
        build = self._build
        odd = self._odd
        reader = csv.reader(chain.from_iterable(map(self._feed, pieces)), delimiter=self._delim)
        end = 0  # reader.line_num after the previous record
        while True:
            try:
                for row in reader:
                    line = base + end + 1
                    end = reader.line_num
                    raw_row = RawRow(line, build(row)) if len(row) == w and row[0] else odd(line, row)
                    if raw_row is None:
                        continue
                    if skip:
                        skip -= 1
                    else:
                        yield raw_row
                return
            except csv.Error as e:
                line = base + end + 1
                end = reader.line_num
                if skip:
                    skip -= 1
                else:
                    yield RawRow(line, None, f"malformed CSV: {e}")


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


class _NdjsonReader(RowReader):
    def __init__(
        self, raw: BinaryIO, owned: bool, encoding: str, max_line_bytes: int, skip_rows: int
    ) -> None:
        super().__init__("ndjson", raw, owned, skip_rows)
        self._overlong = f"line is longer than {max_line_bytes} bytes"
        self._pieces = _text_pieces(raw, encoding, max_line_bytes)

    def _rows(self) -> Iterator[RawRow]:
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        skip = self._skip
        line = 0
        for piece in self._pieces:
            if piece is None:
                line += 1
                if skip:
                    skip -= 1
                else:
                    yield RawRow(line, None, self._overlong)
                continue
            lines = piece.split("\n")
            if not lines[-1]:
                lines.pop()
            for text in lines:
                line += 1
                text = text.strip()
                if not text:
                    continue
                if skip:
                    skip -= 1
                    continue
                if "\x00" in text:
                    yield RawRow(line, None, "NUL byte in line")
                    continue
                try:
                    value = loads(text)
                except decode_error as e:
                    yield RawRow(line, None, f"invalid JSON: {e.msg} at column {e.colno}")
                    continue
                if type(value) is dict:
                    yield RawRow(line, value)
                else:
                    yield RawRow(line, None, f"not a JSON object (got {_kind(value)})")


_JSON_WS = b" \t\r\n"
_TOP_KIND = {b'"': "a string", b"t": "a boolean", b"f": "a boolean", b"n": "null"}
_EVENT_KIND = {
    "start_map": "object",
    "start_array": "list",
    "string": "string",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}


def _json_message(e: Exception) -> str:
    msg = e.args[0] if e.args else str(e)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return str(msg).strip().split("\n", 1)[0] or type(e).__name__


class _JsonReader(RowReader):
    """A top-level array of objects, or an object whose ``"leads"`` key holds one."""

    def __init__(self, raw: BinaryIO, owned: bool, encoding: str, skip_rows: int) -> None:
        super().__init__("json", raw, owned, skip_rows)
        blocks = self._utf8_blocks(raw, encoding)
        offset = 0
        for block in blocks:
            stripped = block.lstrip(_JSON_WS)
            if stripped:
                break
            offset += len(block)
        else:
            if offset == 0:
                raise FileUnreadable("file is empty")
            raise FileUnreadable("no JSON value: the file holds only whitespace")
        first = stripped[:1]
        if first == b"[":
            self._object = False
        elif first == b"{":
            self._object = True
        else:
            at = offset + len(block) - len(stripped)
            if first in _TOP_KIND or first in b"-0123456789":
                kind = _TOP_KIND.get(first, "a number")
                raise FileUnreadable(
                    "the JSON top level must be an array of leads or an object with a "
                    f'"leads" array, not {kind}'
                )
            raise FileUnreadable(f"invalid JSON at byte {at}: unexpected character {first!r}")
        self._blocks: Iterator[bytes] = chain((block,), blocks)

    @staticmethod
    def _utf8_blocks(raw: BinaryIO, encoding: str) -> Iterator[bytes]:
        codec = _codec(encoding)
        if _is_utf8(codec):
            return _strip_bom(_blocks(raw, _JSON_BLOCK))
        # JSON is UTF-8; anything else is transcoded on the fly
        transcoded = (t.encode("utf-8", "replace") for t in _decoded(raw, codec, _JSON_BLOCK))
        return _strip_bom(transcoded)

    def _rows(self) -> Iterator[RawRow]:
        out = ijson.sendable_list()
        items = _IJSON.items_coro(out, "leads.item" if self._object else "item", use_float=True)
        events = ijson.sendable_list()
        checker = _IJSON.parse_coro(events) if self._object else None
        after_key = False
        skip = self._skip
        n = 0
        fed = 0
        block: bytes | None = b""
        try:
            for block in chain(self._blocks, (None,)):
                if block is None:  # end of input
                    items.close()
                    if checker is not None:
                        checker.close()
                else:
                    items.send(block)
                    if checker is not None:
                        checker.send(block)
                if checker is not None:
                    for prefix, event, value in events:
                        if after_key:
                            if event != "start_array":
                                raise FileUnreadable(
                                    f'"leads" must be a list of leads, not {_EVENT_KIND[event]}'
                                )
                            checker = None
                            break
                        if prefix == "" and event == "map_key" and value == "leads":
                            after_key = True
                    del events[:]
                    if block is None and checker is not None:
                        raise FileUnreadable('the JSON object has no "leads" key')
                if out:
                    for item in out:
                        n += 1
                        if skip:
                            skip -= 1
                        elif type(item) is dict:
                            yield RawRow(n, item)
                        else:
                            yield RawRow(n, None, f"not a JSON object (got {_kind(item)})")
                    del out[:]
                if block is not None:
                    fed += len(block)
        except (ijson.JSONError, ValueError) as e:
            n += len(out)  # parsed from the failing block before the error
            where = (
                f"at the end of the file (byte {fed})"
                if block is None
                else f"between bytes {fed} and {fed + len(block)}"
            )
            raise FileUnreadable(f"invalid JSON after item {n}, {where}: {_json_message(e)}") from None


def _cell(value: Any) -> Any:
    if type(value) is float:
        return int(value) if value.is_integer() else value
    if isinstance(value, datetime):
        if value.time() == time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class _XlsxReader(RowReader):
    def __init__(self, raw: BinaryIO, owned: bool, skip_rows: int) -> None:
        super().__init__("xlsx", raw, owned, skip_rows)
        import openpyxl  # heavy: only when a workbook comes

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._wb = openpyxl.load_workbook(raw, read_only=True, data_only=True)
        except Exception as e:
            raise FileUnreadable(f"not a readable .xlsx workbook: {_describe(e)}") from e
        try:
            sheets = self._wb.worksheets
            if not sheets:
                raise FileUnreadable("not a readable .xlsx workbook: it has no worksheet")
            ws = sheets[0]
            ws.reset_dimensions()  # a stale <dimension> must not cut rows or columns
            self._sheet_rows: Iterator[tuple[int, tuple[Any, ...]]] = enumerate(
                ws.iter_rows(min_row=1, values_only=True), 1
            )
            for _, row in self._sheet_rows:
                names = ["" if v is None else str(_cell(v)).strip().lstrip("\ufeff").strip() for v in row]
                if any(names):
                    self.header = _unique_names(names, "header row")
                    break
            else:
                raise FileUnreadable("no header row: the first worksheet is empty")
        except FileUnreadable:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise FileUnreadable(f"not a readable .xlsx workbook: {_describe(e)}") from e

    def _rows(self) -> Iterator[RawRow]:
        assert self.header is not None
        w = len(self.header)
        build = _dict_builder(self.header)
        skip = self._skip
        try:
            for line, row in self._sheet_rows:
                if all(map(_blank, row)):
                    continue
                if skip:
                    skip -= 1
                    continue
                n = len(row)
                while n > w and _blank(row[n - 1]):
                    n -= 1
                if n > w:
                    yield RawRow(line, None, f"{n} values but the header has {w} columns")
                    continue
                cells = [_cell(v) for v in row[:n]]
                if n < w:
                    cells += [None] * (w - n)
                yield RawRow(line, build(cells))
        except Exception as e:
            raise FileUnreadable(f"not a readable .xlsx workbook: {_describe(e)}") from e

    def close(self) -> None:
        wb = getattr(self, "_wb", None)
        if wb is not None:
            self._wb = None
            try:
                wb.close()
            except Exception:  # noqa: S110 - a broken archive: nothing more to release
                pass
        super().close()


def _describe(e: BaseException) -> str:
    text = str(e).strip().split("\n", 1)[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _open_source(source: Path | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(source, str | Path):
        try:
            return open(source, "rb"), True
        except OSError as e:
            raise FileUnreadable(f"cannot open file: {e.strerror or e}") from e
    return source, False


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
    raw, owned = _open_source(source)
    try:
        if fmt == "xlsx":
            if not _seekable(raw):
                spooled = _spool(raw, None)
                if owned:
                    raw.close()
                raw, owned = spooled, True
            return _XlsxReader(raw, owned, skip_rows)
        if encoding is None:
            decided, encoding, spooled_copy = _decide_encoding(raw)
            if spooled_copy:
                if owned:
                    raw.close()
                raw, owned = decided, True
        if fmt == "csv":
            return _CsvReader(raw, owned, encoding, max_line_bytes, skip_rows)
        if fmt == "ndjson":
            return _NdjsonReader(raw, owned, encoding, max_line_bytes, skip_rows)
        return _JsonReader(raw, owned, encoding, skip_rows)
    except BaseException:
        if owned:
            raw.close()
        raise
