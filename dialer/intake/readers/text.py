"""Bytes in, text out: fingerprint a file, decide its encoding, cut it into whole lines.

Files are read in fixed-size blocks; a line longer than the limit is never held in
memory (it is skipped block by block and stands as one ``None``).
"""

from __future__ import annotations

import codecs
import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import AnyStr, BinaryIO

from dialer.errors import FileUnreadable
from dialer.intake.readers.common import FORMATS, TEXT_FORMATS, Fingerprint

_HASH_BLOCK = 1 << 20  # fingerprint / encoding scan
_TEXT_BLOCK = 1 << 16  # csv / ndjson reading (cache-friendly; lines may span blocks)
_NUL_WINDOW = 8192
_SPOOL_MAX = 8 << 20  # non-seekable streams are spooled to disk past this size


class EncodingSniffer:
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


def read_blocks(raw: BinaryIO, size: int) -> Iterator[bytes]:
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
    sniffer = EncodingSniffer()
    size = 0
    try:
        f = open(path, "rb", buffering=0)
    except OSError as e:
        raise FileUnreadable(f"cannot open file: {e.strerror or e}") from e
    with f:
        for block in read_blocks(f, _HASH_BLOCK):
            h.update(block)
            size += len(block)
            if text:
                sniffer.feed(block)
    if size == 0:
        raise FileUnreadable("file is empty")
    return Fingerprint(h.hexdigest(), size, sniffer.finish() if text else None)


def seekable(raw: BinaryIO) -> bool:
    try:
        return bool(raw.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def spool_stream(raw: BinaryIO, sniffer: EncodingSniffer | None) -> BinaryIO:
    """Copy a non-seekable stream to a (disk-backed past 8 MiB) temporary file."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX)
    try:
        for block in read_blocks(raw, _HASH_BLOCK):
            if sniffer is not None:
                sniffer.feed(block)
            spool.write(block)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool  # type: ignore[return-value]


def decide_encoding(raw: BinaryIO) -> tuple[BinaryIO, str, bool]:
    """Scan the stream for its encoding and rewind it: (stream to read, encoding, stream is
    a spool of ours)."""
    sniffer = EncodingSniffer()
    if not seekable(raw):
        spool = spool_stream(raw, sniffer)
        try:
            return spool, sniffer.finish(), True
        except BaseException:
            spool.close()
            raise
    pos = raw.tell()
    for block in read_blocks(raw, _HASH_BLOCK):
        sniffer.feed(block)
        if sniffer.done:
            break
    raw.seek(pos)
    return raw, sniffer.finish(), False


def codec_name(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise FileUnreadable(f"unknown text encoding {encoding!r}") from None


def is_utf8(codec: str) -> bool:
    return codec in ("utf-8", "utf-8-sig")


def _byte_splittable(codec: str) -> bool:
    """Lines can be cut on the byte 0x0A before decoding (ASCII-compatible codecs)."""
    return is_utf8(codec) or "\n".encode(codec) == b"\n"


def strip_bom(blocks: Iterator[bytes]) -> Iterator[bytes]:
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


def text_pieces(raw: BinaryIO, encoding: str, limit: int) -> Iterator[str | None]:
    """Decoded pieces of whole lines; ``None`` for each line longer than ``limit`` bytes."""
    codec = codec_name(encoding)
    limit = max(limit, 1)
    if _byte_splittable(codec):
        blocks = read_blocks(raw, _TEXT_BLOCK)
        if is_utf8(codec):
            blocks = strip_bom(blocks)
            codec = "utf-8"
        for piece in _split_lines(blocks, limit, b"\n", b"\r"):
            yield None if piece is None else piece.decode(codec, "replace")
        return
    # UTF-16/32 and the like: decode first, count the limit in characters
    unit = max(1, len("\n\n".encode(codec)) - len("\n".encode(codec)))

    yield from _split_lines(decoded(raw, codec, _TEXT_BLOCK), max(1, limit // unit), "\n", "\r")


def decoded(raw: BinaryIO, codec: str, size: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(codec)("replace")
    try:
        for block in read_blocks(raw, size):
            text = decoder.decode(block)
            if text:
                yield text
        tail = decoder.decode(b"", True)
    except UnicodeError as e:  # e.g. "UTF-16 stream does not start with BOM"
        raise FileUnreadable(f"cannot decode the file as {codec}: {e}") from None
    if tail:
        yield tail


def open_source(source: Path | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(source, str | Path):
        try:
            return open(source, "rb"), True
        except OSError as e:
            raise FileUnreadable(f"cannot open file: {e.strerror or e}") from e
    return source, False
