"""JSON (an array of leads, or an object with a ``"leads"`` array, read item by item)
and NDJSON (one object per line)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import chain
from typing import Any, BinaryIO

import orjson

from dialer.errors import FileUnreadable
from dialer.intake.readers.common import RawRow, RowReader
from dialer.intake.readers.jsonscan import VALUE_KIND, Input, TooLong, ValueEnd
from dialer.intake.readers.text import codec_name, decoded, is_utf8, read_blocks, strip_bom, text_pieces

_JSON_BLOCK = 1 << 16


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


def without_surrogates(v: Any) -> Any:
    """``v`` with lone UTF-16 surrogates (legal escapes in JSON text, as a CRM that cut an
    emoji in half writes them, but not storable) replaced by U+FFFD."""
    if isinstance(v, str):
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(v, list):
        return [without_surrogates(x) for x in v]
    if isinstance(v, dict):
        return {without_surrogates(k): without_surrogates(x) for k, x in v.items()}
    return v


# An integer past 64 bits is read by orjson as a float (a 23-digit CRM id would come out as
# 1.2345678901234568e+22); such an item is read again by the standard library, which keeps
# it exact. Which items: those with 19 digits in a row, found with two C-speed passes
# (digits → "0", then a substring search), first over a whole block of the file, so the
# items of a block without such a run pay nothing.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN = b"0" * 19


def long_digit_run(data: bytes) -> bool:
    """Whether ``data`` holds 19 digits in a row (maybe an integer orjson cannot keep)."""
    return _LONG_RUN in data.translate(_DIGITS_AS_ZERO)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_exact(data: bytes | str, value: Any) -> Any:
    """``value``, orjson's reading of ``data``, read again with its integers exact (see
    ``long_digit_run``); ``value`` itself where the standard library cannot (an integer of
    over 4,300 digits, nesting deeper than its recursion limit)."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return value


def loads(data: bytes | str) -> Any:
    """orjson, with integers past 64 bits kept exact; raises ``orjson.JSONDecodeError``."""
    value = orjson.loads(data)
    risky = long_digit_run(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return loads_exact(data, value) if risky else value


def loads_lenient(data: bytes | str) -> Any:
    """JSON orjson refused: valid JSON carrying a lone surrogate escape is read all the same
    (the standard library takes it); anything else raises ``ValueError`` (NaN and Infinity
    too: not JSON, though the standard library reads them)."""
    try:
        return without_surrogates(json.loads(data, parse_constant=_no_constant))
    except RecursionError:  # orjson refuses nesting past 1,024 levels too
        raise ValueError("nested too deeply") from None


class NdjsonReader(RowReader):
    def __init__(
        self, raw: BinaryIO, owned: bool, encoding: str, max_line_bytes: int, skip_rows: int
    ) -> None:
        super().__init__("ndjson", raw, owned, skip_rows)
        self._overlong = f"line is longer than {max_line_bytes} bytes"
        self._pieces = text_pieces(raw, encoding, max_line_bytes)

    def _rows(self) -> Iterator[RawRow]:
        loads_orjson, decode_error = orjson.loads, orjson.JSONDecodeError
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
            # whole lines: a piece without a long digit run has no line with one
            risky = long_digit_run(piece.encode("utf-8", "surrogatepass"))
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
                    value = loads_orjson(text)
                    if risky and long_digit_run(text.encode("utf-8", "surrogatepass")):
                        value = loads_exact(text, value)
                except decode_error as e:
                    try:
                        value = loads_lenient(text)
                    except ValueError:
                        yield RawRow(line, None, f"invalid JSON: {e.msg} at column {e.colno}")
                        continue
                if type(value) is dict:
                    yield RawRow(line, value)
                else:
                    yield RawRow(line, None, f"not a JSON object (got {_kind(value)})")


_JSON_WS = b" \t\r\n"
_TOP_KIND = {b'"': "a string", b"t": "a boolean", b"f": "a boolean", b"n": "null"}
# Where a flat lead object most likely ends: a "}" followed by the next item's comma or the
# array's end (and the whitespace after). One inside a string or a nested object makes the
# parse fail: the slow path.
_ITEM_END = re.compile(rb"\}[ \t\r\n]*+([,\]])[ \t\r\n]*+")
_NO_VALUE = object()


def _json_message(e: orjson.JSONDecodeError) -> str:
    return e.msg.strip().split("\n", 1)[0] or type(e).__name__


class JsonReader(RowReader):
    """A top-level array of objects, or an object whose ``"leads"`` key holds one.

    Each item is delimited first (``ValueEnd``, or a quick guess for a flat object that
    the parse then confirms), then parsed on its own: an item longer than the limit is a
    row error, skipped without being parsed or kept (a parser fed one huge token a block
    at a time re-scans it on every block: quadratic).
    """

    def __init__(self, raw: BinaryIO, owned: bool, encoding: str, max_item_bytes: int,
                 skip_rows: int) -> None:
        super().__init__("json", raw, owned, skip_rows)
        self._limit = max(max_item_bytes, 1)
        self._n = 0  # items read
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
        self._input = Input(chain((block,), blocks), offset)

    @staticmethod
    def _utf8_blocks(raw: BinaryIO, encoding: str) -> Iterator[bytes]:
        codec = codec_name(encoding)
        if is_utf8(codec):
            return strip_bom(read_blocks(raw, _JSON_BLOCK))
        # JSON is UTF-8; anything else is transcoded on the fly
        transcoded = (t.encode("utf-8", "replace") for t in decoded(raw, codec, _JSON_BLOCK))
        return strip_bom(transcoded)

    def _rows(self) -> Iterator[RawRow]:
        inp = self._input
        inp.peek()  # onto the "[" or "{"
        inp.pos += 1
        yield from (self._leads_object(inp) if self._object else self._items(inp))
        if inp.peek() is not None:
            raise self._broken(inp, "trailing garbage after the JSON value")

    def _items(self, inp: Input) -> Iterator[RawRow]:
        """The leads array's items, from just after its "[" to just after its "]"."""
        limit = self._limit
        item_end = _ITEM_END.search
        loads_orjson, decode_error = orjson.loads, orjson.JSONDecodeError
        risky_in: bytes | None = None  # the block last checked for a long digit run
        risky = False
        c = inp.peek()
        if c == 0x5D:
            inp.pos += 1
            return
        while True:
            value: Any = _NO_VALUE
            if c == 0x7B:  # a flat object, as most leads are: one search, one parse
                buf, pos = inp.buf, inp.pos
                m = item_end(buf, pos, pos + limit + 64)
                if m is not None and m.start() < pos + limit:
                    try:
                        value = loads_orjson(buf[pos : m.start() + 1])
                    except decode_error:
                        pass  # nested, a "}," inside a string, or broken: the slow path tells
                    else:
                        if buf is not risky_in:  # an item here lies within the block
                            risky_in, risky = buf, long_digit_run(buf)
                        if risky and long_digit_run(item := buf[pos : m.start() + 1]):
                            value = loads_exact(item, value)
                        inp.pos = m.end()
                        c = buf[m.start(1)]
            if value is _NO_VALUE:
                if c is None or c not in VALUE_KIND:
                    raise self._broken(inp, "the leads array is not finished" if c is None
                                       else f"unexpected character {chr(c)!r}")
                value = self._value(inp)
                c = inp.peek()
                if c == 0x2C or c == 0x5D:
                    inp.pos += 1
            self._n += 1
            if self._skip:
                self._skip -= 1
            elif type(value) is dict:
                yield RawRow(self._n, value)
            elif type(value) is TooLong:
                yield RawRow(self._n, None, f"item is longer than {limit} bytes ({value.size} "
                                            f"bytes from byte {value.start})")
            else:
                yield RawRow(self._n, None, f"not a JSON object (got {_kind(value)})")
            if c == 0x2C:  # ","
                buf, pos = inp.buf, inp.pos
                c = buf[pos] if pos < len(buf) and buf[pos] not in _JSON_WS else inp.peek()
            elif c == 0x5D:  # "]"
                return
            else:
                raise self._broken(inp, "the leads array is not finished" if c is None
                                   else f"expected ',' or ']', not {chr(c)!r}")

    def _leads_object(self, inp: Input) -> Iterator[RawRow]:
        """The items of the top-level object's "leads" array; its other keys are skipped."""
        found = False
        c = inp.peek()
        if c == 0x7D:  # "{}"
            inp.pos += 1
        else:
            while True:
                if c != 0x22:
                    raise self._broken(inp, "the JSON object is not finished" if c is None
                                       else f"expected a key, not {chr(c)!r}")
                key = self._value(inp)
                c = inp.peek()
                if c != 0x3A:  # ":"
                    raise self._broken(inp, "the JSON object is not finished" if c is None
                                       else f"expected ':' after a key, not {chr(c)!r}")
                inp.pos += 1
                c = inp.peek()
                if c is None or c not in VALUE_KIND:
                    raise self._broken(inp, "the JSON object is not finished" if c is None
                                       else f"unexpected character {chr(c)!r}")
                if key == "leads":
                    if c != 0x5B:
                        raise FileUnreadable(f'"leads" must be a list of leads, not {VALUE_KIND[c]}')
                    inp.pos += 1
                    found = True
                    yield from self._items(inp)
                else:
                    self._value(inp)  # checked when short enough to parse, never kept
                c = inp.peek()
                if c == 0x2C:
                    inp.pos += 1
                    c = inp.peek()
                elif c == 0x7D:
                    inp.pos += 1
                    break
                else:
                    raise self._broken(inp, "the JSON object is not finished" if c is None
                                       else f"expected ',' or '}}', not {chr(c)!r}")
        if not found:
            raise FileUnreadable('the JSON object has no "leads" key')

    def _value(self, inp: Input) -> Any:
        """The JSON value at the cursor, parsed; the cursor is left just after it. One
        longer than the limit is a ``TooLong``."""
        buf, start, limit = inp.buf, inp.pos, self._limit
        at = inp.at
        scan = ValueEnd(buf[start])
        kept: list[bytes] | None = []  # the value's bytes in the blocks before the last one
        size = 0
        i, j = start, start + 1  # where the value is in this block, where the scan goes on
        while (end := scan.find(buf, j)) < 0:
            size += len(buf) - i
            if kept is not None and size <= limit:
                kept.append(buf[i:])
            else:
                kept = None  # too long: only its end is looked for
            inp.pos = len(buf)
            if not inp.more():
                raise self._broken(inp, f"the value from byte {at} is not finished")
            buf, i, j = inp.buf, 0, 0
        size += end - i
        inp.pos = end
        if kept is None or size > limit:
            return TooLong(size, at)
        data = b"".join((*kept, buf[i:end])) if kept else buf[start:end]
        try:
            return loads(data)
        except orjson.JSONDecodeError as e:
            try:
                return loads_lenient(data)
            except ValueError:
                pass
            raise FileUnreadable(f"invalid JSON after item {self._n}, in the value from byte {at} "
                                 f"to {at + size}: {_json_message(e)}") from None

    def _broken(self, inp: Input, what: str) -> FileUnreadable:
        if inp.pos >= len(inp.buf) and not inp.more():
            where = f"at the end of the file (byte {inp.at})"
        else:
            where = f"at byte {inp.at}"
        return FileUnreadable(f"invalid JSON after item {self._n}, {where}: {what}")
