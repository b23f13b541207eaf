"""The child side of a do-not-call import: lines to COPY text (``line, e164, expires_at``).

A file is cut at line ends into parts (``split_parts``) and each part is normalised by a
child process of the intake pipeline (``iter_part``); small inputs run in a thread
(``iter_stream``). This module is all such a child imports, so it stays light: the
database side (``intake/dnc.py``) pulls in the lifecycle and compliance modules, whose
imports (phonenumbers' geocoder among them) cost a child 0.9 s before its first line.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from dialer.intake import phones

CHUNK = 50_000
MAX_SAMPLES = 100
_BLOCK = 1 << 20
# A line end must show up within this many bytes of the start for the file to be cut
# into parts (the first data line, which may be a header, stays in the first part).
_HEAD_SCAN = 1 << 20
_ESC = str.maketrans({"\\": "", "\t": "", "\n": "", "\r": "", "\x00": ""})
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class DncJob:
    """What a worker needs to normalise lines (picklable)."""

    region: str
    default_expiry: datetime | None = None
    # the import's moment: a line whose own expiry is not after it protects nobody, and
    # would still cancel the number's calls (an invalid line, as the API refuses it)
    now: datetime | None = None
    chunk_lines: int = CHUNK
    # small first chunks: the COPY starts while the rest is normalised; fourfold up to chunk_lines
    first_chunk_lines: int = 2_000


@dataclass(slots=True)
class DncChunk:
    data: bytes  # COPY text: line, e164, expires_at
    lines: int  # the number of the last line read so far (valid or not)
    valid: int
    invalid: int
    samples: list[dict[str, Any]]  # invalid lines, in line order (at most MAX_SAMPLES per part)
    read: int  # bytes of the input consumed since the previous chunk


def parse_expiry(text: str) -> datetime:
    """An ISO 8601 date or time, in UTC; with no offset it is UTC (a date: its UTC midnight),
    so the database never reads it in its session's zone. (PostgreSQL takes no offset past
    ±15:59, Python's up to ±23:59.) ``ValueError`` for what is none, or out of range."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    try:
        return dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError(f"{text.strip()!r} is out of range") from None


# --------------------------------------------------------------------------- lines


def _pieces(f: BinaryIO, start: int, end: int | None) -> Iterator[tuple[str, int]]:
    """Decoded pieces made of whole lines of bytes ``[start, end)`` (``end`` None: to the
    end of the stream), each with the bytes it took. Cut after a ``\n`` (or, in a file
    with none for a long while, after a lone ``\r``), so no line end is ever split. A
    UTF-8 byte order mark at the start of the stream is dropped."""
    pos = start
    pending = b""
    carried = 0  # bytes taken but not reported yet (a byte order mark)
    if start == 0:
        head = b""
        while len(head) < 3 and (more := f.read(3 - len(head))):
            head += more
        pos += len(head)
        if head == _BOM:
            carried = 3
        else:
            pending = head
    while True:
        want = _BLOCK if end is None else min(_BLOCK, end - pos)
        block = f.read(want) if want > 0 else b""
        pos += len(block)
        if not block:
            if pending or carried:
                yield pending.decode("utf-8", "replace"), len(pending) + carried
            return
        data = pending + block if pending else block
        j = data.rfind(b"\n")
        if j < 0 and len(data) > _BLOCK:
            # Lone-\r line ends (old Mac files): cut after one that is not the last byte,
            # which could be the first half of a \r\n.
            j = data.rfind(b"\r", 0, len(data) - 1)
        if j < 0:
            pending = data
            continue
        pending = data[j + 1:]
        yield data[: j + 1].decode("utf-8", "replace"), j + 1 + carried
        carried = 0


def _split(piece: str) -> list[str]:
    """Lines as a text stream with universal line ends reads them (``\\n``, ``\\r\\n``,
    ``\\r``); the terminators may stay on, they are stripped with the whitespace."""
    if "\r" in piece:
        return list(io.StringIO(piece, newline=""))
    lines = piece.split("\n")
    if not lines[-1]:
        lines.pop()
    return lines


def _lines_before(f: BinaryIO, start: int) -> int:
    """How many lines end in the first ``start`` bytes (``\\n``, ``\\r\\n`` or ``\\r``)."""
    f.seek(0)
    n = 0
    left = start
    prev_cr = False
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            break
        left -= len(block)
        n += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        if prev_cr and block[:1] == b"\n":
            n -= 1  # a \r\n cut by the block boundary is one line end
        prev_cr = block[-1:] == b"\r"
    return n


def encode(pieces: Iterator[tuple[str, int]], job: DncJob, first_line: int,
           look_for_header: bool) -> Iterator[DncChunk]:
    """Normalise lines to COPY text (line, e164, expires_at), ``job.chunk_lines`` valid
    lines per chunk (fewer in the first few); the last chunk (possibly empty) carries the
    final line count."""
    region = job.region
    default = job.default_expiry
    default_text = default.isoformat() if default else "\\N"
    now = job.now
    normalise = phones.normalise
    n = first_line - 1
    buf: list[str] = []
    samples: list[dict[str, Any]] = []
    kept = 0  # samples kept in this part
    valid = invalid = read = 0
    header = look_for_header
    size_now = min(job.chunk_lines, job.first_chunk_lines)
    for piece, size in pieces:
        read += size
        for raw in _split(piece):
            n += 1
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            if line.isdigit():  # the registry shape: nothing to cut, certainly no header
                number, rest = line, ""
                header = False
            else:
                number, _, rest = line.replace(";", ",").replace("\t", ",").partition(",")
                number = number.strip().strip('"')
                if header:
                    header = False
                    if not any(ch.isdigit() for ch in number):
                        continue  # a header line
            e164, why = normalise(number, region)
            expiry = default_text
            if e164 is not None and rest.strip():
                given = rest.split(",")[0].strip('" ')
                try:
                    dt = parse_expiry(given)
                except ValueError as e:
                    e164 = None
                    why = (f"expires_at {given[:40]!r} is out of range" if "out of range" in str(e)
                           else f"expires_at {rest.strip()[:40]!r} is not an ISO date")
                else:
                    if now is not None and dt <= now:
                        e164, why = None, f"expires_at {given[:40]!r} is in the past"
                    else:
                        expiry = dt.isoformat()
            if e164 is None:
                invalid += 1
                if kept < MAX_SAMPLES:
                    kept += 1
                    samples.append({"line": n, "value": line[:64].translate(_ESC), "reason": why})
                continue
            valid += 1
            buf.append(f"{n}\t{e164}\t{expiry}\n")
            if len(buf) >= size_now:
                yield DncChunk("".join(buf).encode(), n, valid, invalid, samples, read)
                buf, samples = [], []
                valid = invalid = read = 0
                size_now = min(job.chunk_lines, size_now * 4)
    yield DncChunk("".join(buf).encode(), n, valid, invalid, samples, read)


def iter_stream(stream: BinaryIO, job: DncJob) -> Iterator[DncChunk]:
    """A whole stream, in this process (thread path)."""
    return encode(_pieces(stream, 0, None), job, 1, True)


def iter_part(path: Path, start: int, end: int, job: DncJob) -> Iterator[DncChunk]:
    """Bytes ``[start, end)`` of a file (cut at line ends), in a child process."""
    with path.open("rb") as f:
        first_line = _lines_before(f, start) + 1 if start else 1
        f.seek(start)
        yield from encode(_pieces(f, start, end), job, first_line, start == 0)


def split_parts(path: Path, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges that cut the file after a ``\n``, the first one
    holding at least the first data line (the only one that may be a header)."""
    size = path.stat().st_size
    if parts <= 1:
        return [(0, size)]
    with path.open("rb") as f:
        head = f.read(_HEAD_SCAN)
        floor = _first_data_line_end(head)
        if floor is None:
            return [(0, size)]
        cuts = [0]
        for k in range(1, parts):
            at = max(size * k // parts, floor, cuts[-1])
            f.seek(at)
            while True:  # on to the next line end
                block = f.read(1 << 16)
                if not block:
                    at = size
                    break
                i = block.find(b"\n")
                if i >= 0:
                    at += i + 1
                    break
                at += len(block)
            if cuts[-1] < at < size:
                cuts.append(at)
        cuts.append(size)
    return list(itertools.pairwise(cuts))


def _first_data_line_end(head: bytes) -> int | None:
    """The byte offset just past the ``\n`` that ends (or follows) the first line that is
    neither blank nor a comment, read as ``encode`` reads lines; None if not in ``head``."""
    last = head.rfind(b"\n")
    if last < 0:
        return None
    text = head[: last + 1].removeprefix(_BOM).decode("utf-8", "replace")
    newlines = 0
    for raw in io.StringIO(text, newline=""):
        newlines += raw.endswith("\n")
        line = raw.strip()
        if line and line[0] != "#":
            if not raw.endswith("\n"):
                newlines += 1  # a lone \r ended it: the part ends at the next \n
            break
    else:
        return None
    at = -1
    for _ in range(newlines):
        at = head.find(b"\n", at + 1)
        if at < 0:
            return None
    return at + 1
