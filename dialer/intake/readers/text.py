"""Bytes in, text out: open and fingerprint a file, decide its encoding, cut it into whole
lines.

Files are read in fixed-size blocks; a line longer than the limit is never held in
memory (it is skipped block by block and stands as one ``None``).

A file is fingerprinted through one open, and parsed through another (often in a child
process): the parse reads it only if its own open finds the very file fingerprinted,
unchanged, and fails if it changes while read, or if its path names another file or none
(``FileId``; ``open_file``'s ``expect``, ``check_unchanged``, ``check_still_named``). The
bytes parsed are the bytes whose sha256 names the batch.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import AnyStr, BinaryIO

from dialer.errors import FileReplaced, FileUnreadable
from dialer.intake.readers.common import FORMATS, TEXT_FORMATS, FileId, Fingerprint

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


REPLACED = "the file was replaced while it was read"

# O_NONBLOCK: a FIFO (or device) put where a file was never blocks the open; cleared once
# the file is known to be a regular one
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_NO_LINK = os.O_NOFOLLOW


def open_file(path: Path, *, no_links_below: Path | None = None, expect: FileId | None = None,
              buffering: int = -1) -> BinaryIO:
    """``path`` opened to read; anything but a regular file is ``FileUnreadable``.

    ``no_links_below``: no symbolic link is followed, neither ``path`` itself nor a folder
    on its way down from there (each is opened without following one, relative to the one
    above). None: links are followed (a path a user typed). ``expect``: the file must be
    that one, unchanged; ``FileReplaced`` if not, if it is gone, or a link is found."""
    try:
        fd = _open_fd(path, no_links_below)
    except OSError as e:
        if no_links_below is not None and e.errno == errno.ELOOP:
            if expect is None:
                raise FileUnreadable("cannot open file: it is a symbolic link (links are not "
                                     "followed)") from None
            raise FileReplaced(f"{REPLACED}: a symbolic link was put in its place (links are not "
                               "followed)") from None
        if expect is not None and e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileReplaced(f"{REPLACED}: it was removed") from None
        raise FileUnreadable(f"cannot open file: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if expect is not None and FileId.of(st) != expect:
            raise FileReplaced(_what_changed(expect, FileId.of(st)))
        if not stat.S_ISREG(st.st_mode):
            raise FileUnreadable("cannot open file: not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def _open_fd(path: Path, no_links_below: Path | None) -> int:
    if no_links_below is None:
        return os.open(path, _OPEN_FLAGS)
    at, name = folder_fd(path, no_links_below)
    if at is None:  # not below it: no link followed at the file itself
        return os.open(path, _OPEN_FLAGS | _NO_LINK)
    try:
        return os.open(name, _OPEN_FLAGS | _NO_LINK, dir_fd=at)
    finally:
        os.close(at)


def folder_fd(path: Path, no_links_below: Path) -> tuple[int | None, str]:
    """The folder holding ``path``, opened from ``no_links_below`` down without following a
    link (ELOOP if one is on the way), and the file's name in it; None if ``path`` is not
    below ``no_links_below``."""
    try:
        parts = path.relative_to(no_links_below).parts
    except ValueError:
        parts = ()
    if not parts:
        return None, str(path)
    at = os.open(no_links_below, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                down = os.open(part, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | _NO_LINK, dir_fd=at)
            except NotADirectoryError:  # what O_DIRECTORY says of a link, even to a folder
                if stat.S_ISLNK(os.stat(part, dir_fd=at, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                raise
            os.close(at)
            at = down
    except BaseException:
        os.close(at)
        raise
    return at, parts[-1]


def check_still_named(f: BinaryIO, path: Path, *, no_links_below: Path | None) -> None:
    """``FileReplaced`` unless ``path`` still names the open file ``f``: one renamed over or
    removed while it is read reads on unchanged through ``f``, yet it is no longer the file
    dropped there (``open_file``'s ``no_links_below``: how ``path`` is looked up)."""
    fst = os.fstat(f.fileno())
    try:
        if no_links_below is None:
            st = os.stat(path)
        else:
            at, name = folder_fd(path, no_links_below)
            try:
                st = os.stat(name, dir_fd=at, follow_symlinks=False)
            finally:
                if at is not None:
                    os.close(at)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileReplaced(f"{REPLACED}: a symbolic link was put in its place (links are not "
                               "followed)") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileReplaced(f"{REPLACED}: it was removed") from None
        raise FileUnreadable(f"cannot read file: {e.strerror or e}") from e
    if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
        if stat.S_ISLNK(st.st_mode):
            raise FileReplaced(f"{REPLACED}: a symbolic link was put in its place (links are not "
                               "followed)")
        raise FileReplaced(f"{REPLACED}: another file was put in its place")


def _what_changed(was: FileId, now: FileId) -> str:
    if (now.dev, now.ino) != (was.dev, was.ino):
        return f"{REPLACED}: another file was put in its place"
    return f"{REPLACED}: its content changed (written to since it was first read)"


def check_unchanged(f: BinaryIO, was: FileId) -> None:
    """``FileReplaced`` if the open file ``f`` is no longer ``was`` (written to meanwhile)."""
    now = FileId.of(os.fstat(f.fileno()))
    if now != was:
        raise FileReplaced(_what_changed(was, now))


def fingerprint(source: Path | BinaryIO, fmt: str) -> Fingerprint:
    """One streaming pass (1 MiB blocks): sha256 of the bytes and, for text formats, the
    encoding.  Raises ``FileUnreadable`` for an empty file or a text file that looks binary,
    ``FileReplaced`` for one written to while it was read.  ``source``: a path (links
    followed) or a file opened by ``open_file``, read from its start."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    text = fmt in TEXT_FORMATS
    h = hashlib.sha256()
    sniffer = EncodingSniffer()
    size = 0
    f = open_file(source, buffering=0) if isinstance(source, Path) else source
    try:
        was = FileId.of(os.fstat(f.fileno()))
        for block in read_blocks(f, _HASH_BLOCK):
            h.update(block)
            size += len(block)
            if text:
                sniffer.feed(block)
        check_unchanged(f, was)  # else the hash is of a mix of versions
    finally:
        if f is not source:
            f.close()
    if size == 0:
        raise FileUnreadable("file is empty")
    return Fingerprint(h.hexdigest(), size, sniffer.finish() if text else None, was)


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
