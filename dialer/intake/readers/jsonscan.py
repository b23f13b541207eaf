"""JSON scanned, not parsed: a file's bytes block by block with a cursor (``Input``), and
where one value ends (``ValueEnd``), in time linear in its size and without keeping it.

The JSON reader delimits each lead this way before parsing it alone, so that one too long
is skipped unread (a parser fed a huge token block by block re-scans it on every block).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

VALUE_KIND = {ord("{"): "object", ord("["): "list", ord('"'): "string", ord("t"): "boolean",
               ord("f"): "boolean", ord("n"): "null", **{c: "number" for c in b"-0123456789"}}
_NOT_WS = re.compile(rb"[^ \t\r\n]")
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)  # up to the closing quote


def _nested(levels: int) -> bytes:
    """Bytes without brackets, strings, and bracketed runs of those nested up to ``levels``
    deep (brackets are paired by nesting only: the parse checks the values it keeps)."""
    atom = rb'(?:[^\[\]{}"]++|' + _STRING + rb")"
    run = atom + rb"*+"
    for _ in range(levels):
        run = rb"(?:" + atom + rb"|[\[{]" + run + rb"[\]}])*+"
    return run


_BALANCED = re.compile(_nested(3), re.DOTALL)  # skipped in one match, not walked byte by byte
_DEEP = 64  # past this depth, runs without strings are counted (see ValueEnd._deep)
_SCALAR_END = re.compile(rb"[ \t\r\n,\]}]")


class TooLong:
    """A value longer than the limit, skipped: neither parsed nor kept."""

    __slots__ = ("size", "start")

    def __init__(self, size: int, start: int) -> None:
        self.size = size
        self.start = start


class Input:
    """A JSON file's UTF-8 bytes, a block at a time, with a cursor: ``buf[pos]`` is byte
    ``base + pos`` of the file."""

    __slots__ = ("_blocks", "base", "buf", "pos")

    def __init__(self, blocks: Iterator[bytes], base: int) -> None:
        self._blocks = blocks
        self.buf = b""
        self.pos = 0
        self.base = base

    @property
    def at(self) -> int:
        return self.base + self.pos

    def more(self) -> bool:
        """The next block after what is left of the buffer; False at the end of the file."""
        block = next(self._blocks, None)
        if block is None:
            return False
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.buf = rest + block if rest else block
        self.pos = 0
        return True

    def peek(self) -> int | None:
        """The next byte that is not whitespace, the cursor on it; None at the end of the file."""
        while True:
            m = _NOT_WS.search(self.buf, self.pos)
            if m is not None:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self.more():
                return None


class ValueEnd:
    """Where one JSON value ends, found block by block without parsing it: only strings
    (with their escapes) and the nesting of brackets are followed, so the cost is linear
    and nothing needs to be kept. Built on the value's first byte; ``find`` from the next."""

    __slots__ = ("depth", "escaped", "in_string", "scalar")

    def __init__(self, first: int) -> None:
        self.scalar = first not in b'"[{'
        self.in_string = first == 0x22
        self.escaped = False
        self.depth = 1 if first in b"[{" else 0

    def find(self, buf: bytes, i: int) -> int:
        """The index just after the value's last byte, or -1 if it goes on past ``buf``."""
        if self.scalar:
            m = _SCALAR_END.search(buf, i)
            return -1 if m is None else m.start()
        n = len(buf)
        while i < n:
            if self.in_string:
                if self.escaped:  # a backslash ended the previous block
                    self.escaped = False
                    i += 1
                    continue
                q = buf.find(b'"', i)
                if buf.find(b"\\", i, n if q < 0 else q) < 0:  # no escape: a long string is quick
                    i = n if q < 0 else q
                else:
                    i = _STRING_REST.match(buf, i).end()  # type: ignore[union-attr]  # it matches ""
                if i == n:
                    return -1
                if buf[i] == 0x5C:  # the block's last byte, a backslash
                    self.escaped = True
                    i += 1
                    continue
                i += 1  # the closing quote
                self.in_string = False
                if self.depth == 0:
                    return i
            else:
                if self.depth > _DEEP:
                    i = self._deep(buf, i)
                i = _BALANCED.match(buf, i).end()  # type: ignore[union-attr]  # it matches ""
                if i == n:
                    return -1
                c = buf[i]
                i += 1
                if c == 0x22:
                    self.in_string = True
                elif c == 0x5B or c == 0x7B:
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 0:
                        return i
        return -1

    def _deep(self, buf: bytes, i: int) -> int:
        """Deep in: a run without strings that has fewer closing brackets than the depth
        cannot end the value, and is counted rather than walked."""
        q = buf.find(b'"', i)
        if q < 0:
            q = len(buf)
        closed = buf.count(b"]", i, q) + buf.count(b"}", i, q)
        if closed < self.depth:
            self.depth += buf.count(b"[", i, q) + buf.count(b"{", i, q) - closed
            return q
        return i
