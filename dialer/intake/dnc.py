"""Do-not-call list imports: one number per line (or ``number,expires_at`` CSV), such as
the 10-digit area-code files of national registries.

What people and CRMs write to the list goes through here: these imports (``dialer dnc
import``, the API's text body, the console), ``add_numbers`` for the API's JSON list, and
``remove``. (A disposition that lists a number does it inside its callback's transaction,
in ``lifecycle/ended.py``.)

Normalising each line to E.164 is the CPU-bound part, so it leaves the daemon's process:
a file is cut at line ends into a few parts, each part normalised by a child process of
the intake pipeline (``pipeline.from_process``) into COPY text, which the daemon COPYs
as it comes into a temporary table; small inputs (API bodies) use a thread. Then the
table is merged into the list (deduplicated, latest expiry wins, in key order) and calls
not yet sent to a newly listed number are cancelled, in the same transaction. Memory
stays flat on any size: chunks of ``CHUNK`` lines, a bounded queue per child.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import asyncpg

from dialer.intake import phones
from dialer.intake.pipeline import from_process, from_thread, merged
from dialer.lifecycle import moves, next_number, observe
from dialer.store.queries import Q

CHUNK = 50_000
MAX_SAMPLES = 100
# Below this size a child process costs more than it saves; each part is at least this big.
PROCESS_THRESHOLD_BYTES = 2 << 20
MAX_PARTS = 4
_BLOCK = 1 << 20
# A line end must show up within this many bytes of the start for the file to be cut
# into parts (the first data line, which may be a header, stays in the first part).
_HEAD_SCAN = 1 << 20
_ESC = str.maketrans({"\\": "", "\t": "", "\n": "", "\r": "", "\x00": ""})
_BOM = b"\xef\xbb\xbf"


@dataclass
class DncReport:
    lines: int = 0
    valid: int = 0
    added: int = 0
    updated: int = 0
    invalid: int = 0
    cancelled_calls: int = 0
    invalid_samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines, "valid": self.valid, "added": self.added, "updated": self.updated,
            "duplicates_in_file": self.valid - self.added - self.updated, "invalid": self.invalid,
            "cancelled_calls": self.cancelled_calls, "invalid_samples": self.invalid_samples,
        }


@dataclass(frozen=True, slots=True)
class DncJob:
    """What a worker needs to normalise lines (picklable)."""

    region: str
    default_expiry: datetime | None = None
    chunk_lines: int = CHUNK


@dataclass(slots=True)
class DncChunk:
    data: bytes  # COPY text: line, e164, expires_at
    lines: int  # the number of the last line read so far (valid or not)
    valid: int
    invalid: int
    samples: list[dict[str, Any]]  # invalid lines, in line order (at most MAX_SAMPLES per part)
    read: int  # bytes of the input consumed since the previous chunk


def _parse_expiry(text: str) -> datetime | None:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


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
    lines per chunk; the last chunk (possibly empty) carries the final line count."""
    region = job.region
    default = job.default_expiry
    default_text = default.isoformat() if default else "\\N"
    normalise = phones.normalise
    n = first_line - 1
    buf: list[str] = []
    samples: list[dict[str, Any]] = []
    kept = 0  # samples kept in this part
    valid = invalid = read = 0
    header = look_for_header
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
                try:
                    dt = _parse_expiry(rest.split(",")[0].strip('" '))
                    expiry = dt.isoformat() if dt else "\\N"
                except ValueError:
                    e164, why = None, f"expires_at {rest.strip()[:40]!r} is not an ISO date"
            if e164 is None:
                invalid += 1
                if kept < MAX_SAMPLES:
                    kept += 1
                    samples.append({"line": n, "value": line[:64].translate(_ESC), "reason": why})
                continue
            valid += 1
            buf.append(f"{n}\t{e164}\t{expiry}\n")
            if len(buf) >= job.chunk_lines:
                yield DncChunk("".join(buf).encode(), n, valid, invalid, samples, read)
                buf, samples = [], []
                valid = invalid = read = 0
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


# --------------------------------------------------------------------------- import


async def _import(pool: asyncpg.Pool, chunks: AsyncIterator[DncChunk], *, source: str, now: datetime,
                  on_progress: Callable[[int], None] | None) -> DncReport:
    report = DncReport()
    done = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.dnc_import_table)
        async for chunk in chunks:
            if chunk.data:
                await conn.copy_to_table("dnc_import", source=memoryview(chunk.data),
                                         columns=["line", "e164", "expires_at"], format="text")
            report.lines = max(report.lines, chunk.lines)
            report.valid += chunk.valid
            report.invalid += chunk.invalid
            report.invalid_samples.extend(chunk.samples)
            done += chunk.read
            if on_progress:
                on_progress(done)
        # parts finish in any order: keep the first samples of the file, in line order
        report.invalid_samples.sort(key=lambda s: s["line"])
        del report.invalid_samples[MAX_SAMPLES:]
        report.added, report.updated = await _merge(conn, source, now)
        ended = await moves.cancel_for_dnc_import(conn, now)
        await next_number.after_dnc_import(conn, now)  # several-number leads go on
        report.cancelled_calls = sum(e.n for e in ended)
    observe.ended(ended)
    return report


async def _merge(conn: asyncpg.Connection, source: str, now: datetime) -> tuple[int, int]:
    """The imported numbers into the list: (added, updated)."""
    await conn.execute(Q.dnc_import_sorted)
    try:
        async with conn.transaction():  # a savepoint
            row = await conn.fetchrow(Q.dnc_import_merge_sorted, source, now)
    except asyncpg.UniqueViolationError:
        # another transaction listed one of these numbers after our snapshot
        row = await conn.fetchrow(Q.dnc_import_merge, source, now)
    return int(row["added"]), int(row["updated"])


async def import_stream(
    pool: asyncpg.Pool,
    stream: BinaryIO,
    *,
    region: str,
    source: str,
    now: datetime,
    default_expiry: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DncReport:
    """A stream normalised in a worker thread (small inputs); ``on_progress``: bytes read."""
    job = DncJob(region, default_expiry)
    return await _import(pool, from_thread(iter_stream(stream, job)), source=source, now=now,
                         on_progress=on_progress)


async def import_file(
    pool: asyncpg.Pool,
    path: Path,
    *,
    region: str,
    source: str,
    now: datetime,
    default_expiry: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    parts: int | None = None,
) -> DncReport:
    """A file normalised by child processes, one per part (``parts``: default one per core,
    at most ``MAX_PARTS``, each at least ``PROCESS_THRESHOLD_BYTES``)."""
    size = (await anyio.Path(path).stat()).st_size
    if size < PROCESS_THRESHOLD_BYTES:
        with path.open("rb") as f:
            return await import_stream(pool, f, region=region, source=source, now=now,
                                       default_expiry=default_expiry, on_progress=on_progress)
    if parts is None:
        parts = max(1, min(os.cpu_count() or 1, MAX_PARTS, size // PROCESS_THRESHOLD_BYTES))
    job = DncJob(region, default_expiry)
    ranges = await anyio.to_thread.run_sync(split_parts, path, parts)
    async with merged([from_process(iter_part, path, a, b, job) for a, b in ranges]) as chunks:
        return await _import(pool, chunks, source=source, now=now, on_progress=on_progress)


async def import_bytes(pool: asyncpg.Pool, body: bytes, **kwargs: Any) -> DncReport:
    return await import_stream(pool, io.BytesIO(body), **kwargs)


async def add_numbers(pool: asyncpg.Pool, numbers: Sequence[str], *, source: str, now: datetime,
                      expires_at: datetime | None = None) -> tuple[int, int]:
    """Numbers already in E.164 (the API's JSON list): listed, or their expiry replaced, and
    their calls not yet sent cancelled in every target, in one transaction. Returns
    (added, updated)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(Q.dnc_add, list(numbers), source, now, expires_at)
        cancelled = await moves.cancel_for_dnc(conn, numbers, now, {"rule": "dnc", "by": source})
        await next_number.after_dnc(conn, list(numbers), now)  # several-number leads go on
    observe.ended(cancelled)
    added = sum(1 for x in rows if x["inserted"])
    return added, len(rows) - added


async def remove(pool: asyncpg.Pool, e164: str) -> bool:
    """Take a number off the list; False if it was not on it."""
    async with pool.acquire() as conn:
        return await conn.fetchval(Q.dnc_delete, e164) is not None
