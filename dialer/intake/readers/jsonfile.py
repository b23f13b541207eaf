"""JSON (an array of leads, or an object with a ``"leads"`` array, parsed incrementally)
and NDJSON (one object per line)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any, BinaryIO

import ijson
import orjson

from dialer.errors import FileUnreadable
from dialer.intake.readers.common import RawRow, RowReader
from dialer.intake.readers.text import codec_name, decoded, is_utf8, read_blocks, strip_bom, text_pieces

_JSON_BLOCK = 1 << 16  # json: small enough for useful error offsets


def _ijson_backend() -> Any:
    for name in ("yajl2_c", "yajl2_cffi", "yajl2"):
        try:
            return ijson.get_backend(name)
        except Exception:  # noqa: S112 - backend not built for this platform: try the next
            continue
    return ijson


_IJSON = _ijson_backend()


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


class NdjsonReader(RowReader):
    def __init__(
        self, raw: BinaryIO, owned: bool, encoding: str, max_line_bytes: int, skip_rows: int
    ) -> None:
        super().__init__("ndjson", raw, owned, skip_rows)
        self._overlong = f"line is longer than {max_line_bytes} bytes"
        self._pieces = text_pieces(raw, encoding, max_line_bytes)

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


class JsonReader(RowReader):
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
        codec = codec_name(encoding)
        if is_utf8(codec):
            return strip_bom(read_blocks(raw, _JSON_BLOCK))
        # JSON is UTF-8; anything else is transcoded on the fly
        transcoded = (t.encode("utf-8", "replace") for t in decoded(raw, codec, _JSON_BLOCK))
        return strip_bom(transcoded)

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
