"""A local, fsync'd spool for callbacks that arrive while PostgreSQL is unreachable.

Ryng retries a terminal callback only twice, a minute apart, so a database outage of a
few minutes must not lose callbacks: each one is appended to a segment file and fsync'd
*before* we answer 200, then replayed in arrival order when the database returns.
While anything is spooled, new callbacks are spooled too, so order is kept.

Files in the spool directory:

* ``seg-<n>.jsonl``: callbacks, one JSON line each. ``n`` only grows (a persisted
  counter, ``seq``, and the wall clock), so a name is never reused, even after the
  directory empties or the clock steps back. After a failed write the next callback
  goes to a fresh segment: a torn line is only ever the last of its segment, where
  replay stops reading.
* ``seg-<n>.offset``: how far replay got in that segment, rewritten in place and
  fdatasync'd after every item, so a crash replays at most the item in progress
  (harmless: states only move forward, a duplicate is recorded as not applied).
  Deleted before its segment; one left without a segment is removed at start-up.
* ``quarantine.jsonl``: dead letters, items the database refused for a reason other
  than being unreachable. They are kept for a person and never retried, so one bad
  item cannot wedge replay while every new callback queues behind it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson

log = logging.getLogger(__name__)

QUARANTINE = "quarantine.jsonl"
_SEQ = "seq"
_SEGMENT = re.compile(r"^seg-(\d{1,20})\.(jsonl|offset)$")


@dataclass(slots=True)
class Spooled:
    kind: str
    chunk_id: int
    content_type: str
    body: bytes
    received_at: str

    def fields(self) -> dict[str, Any]:
        return {"kind": self.kind, "chunk_id": self.chunk_id, "ctype": self.content_type,
                "body": base64.b64encode(self.body).decode(), "at": self.received_at}

    def encode(self) -> bytes:
        return orjson.dumps(self.fields()) + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Spooled:
        """Raises ValueError (or KeyError, TypeError) for a line that is not one of ours."""
        d: dict[str, Any] = orjson.loads(line)
        return cls(d["kind"], int(d["chunk_id"]), d["ctype"], base64.b64decode(d["body"], validate=True),
                   d["at"])


@dataclass(slots=True)
class Quarantined:
    """An item replay gave up on: ``item`` is None when the line itself was unreadable."""

    line: bytes
    item: Spooled | None
    error: str


Apply = Callable[[Spooled], Awaitable[None]]
Refused = Callable[[BaseException], bool]
OnQuarantine = Callable[[Quarantined], Awaitable[None]]

_UNREADABLE = (ValueError, KeyError, TypeError, binascii.Error)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` may write less than asked (a file-size limit, a signal): loop."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "spool write made no progress")
        view = view[n:]


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _put_offset(fd: int, offset: int) -> None:
    # fixed width, in place: never a moment when the file is empty or half written
    os.pwrite(fd, f"{offset:020d}\n".encode(), 0)
    os.fdatasync(fd)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = anyio.Lock()  # appends and rotation
        self._replaying = anyio.Lock()  # one replay at a time, held across all of it
        self._fd: int | None = None
        self._active: Path | None = None
        self._remove_orphan_offsets()
        self.depth = self._count()
        self.wake = anyio.Event()

    # -- files ------------------------------------------------------------------------------
    @staticmethod
    def _number(p: Path) -> int:
        m = _SEGMENT.match(p.name)
        return int(m.group(1)) if m else -1

    def _segments(self) -> list[Path]:
        segs = [p for p in self.dir.glob("seg-*.jsonl") if self._number(p) >= 0]
        return sorted(segs, key=self._number)

    def _offset_path(self, seg: Path) -> Path:
        return seg.with_suffix(".offset")

    def _offset(self, seg: Path) -> int:
        try:
            return int(self._offset_path(seg).read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def _remove_orphan_offsets(self) -> None:
        """An offset whose segment is gone must never be read against a later one."""
        for off in self.dir.glob("seg-*.offset"):
            if not off.with_suffix(".jsonl").exists():
                log.info("removing spool offset with no segment", extra={"file": off.name})
                off.unlink(missing_ok=True)

    def _count(self) -> int:
        n = 0
        for seg in self._segments():
            with seg.open("rb") as f:
                f.seek(self._offset(seg))
                n += sum(1 for line in f if line.endswith(b"\n"))
        return n

    def _next_number(self) -> int:
        try:
            last = int((self.dir / _SEQ).read_text().strip())
        except (FileNotFoundError, ValueError):
            last = 0
        segs = self._segments()
        if segs:
            last = max(last, self._number(segs[-1]))
        n = max(time.time_ns(), last + 1)
        tmp = self.dir / f"{_SEQ}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, f"{n}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / _SEQ)
        return n

    def _open_new(self) -> None:
        self._active = self.dir / f"seg-{self._next_number():020d}.jsonl"
        self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _fsync_dir(self.dir)  # the new file's directory entry (and seq) are durable too

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._open_new()
        assert self._fd is not None
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except BaseException:
            # whatever part was written stays a torn last line; the next item must not
            # be glued to it, so it starts a fresh segment
            self._rotate()
            raise

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._active = None

    def _dead_letter(self, q: Quarantined) -> None:
        record: dict[str, Any] = (q.item.fields() if q.item is not None
                                  else {"line": base64.b64encode(q.line).decode()})
        record.update(error=q.error, quarantined_at=datetime.now(UTC).isoformat())
        fd = os.open(self.dir / QUARANTINE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_all(fd, orjson.dumps(record) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.dir)

    # -- the two verbs ----------------------------------------------------------------------
    async def append(self, item: Spooled) -> None:
        """Durably store one callback; raises OSError (e.g. disk full) if it cannot."""
        data = item.encode()
        async with self._lock:
            await anyio.to_thread.run_sync(self._write, data)
            self.depth += 1
        self.wake.set()

    async def replay(self, apply: Apply, *, refused: Refused = lambda e: False,
                     on_quarantine: OnQuarantine | None = None) -> int:
        """Apply spooled callbacks oldest first; returns how many were consumed.

        One replay at a time: a second caller waits for the first, then replays what is
        left. An item ``apply`` fails with an error ``refused`` accepts (or a line that
        cannot be read) goes to the quarantine file and replay moves on; any other error
        stops replay and is raised, and that item is tried again next time.
        """
        async with self._replaying:
            async with self._lock:
                self._rotate()  # new arrivals go to a fresh segment while we replay
                segments = self._segments()
            done = 0
            for seg in segments:
                done += await self._replay_segment(seg, apply, refused, on_quarantine)
            async with self._lock:  # recount: depth is what is on disk, never below zero
                self.depth = await anyio.to_thread.run_sync(self._count)
            return done

    async def _replay_segment(self, seg: Path, apply: Apply, refused: Refused,
                              on_quarantine: OnQuarantine | None) -> int:
        done = 0
        offset = self._offset(seg)
        off_fd = await anyio.to_thread.run_sync(self._open_offset, seg)
        try:
            with seg.open("rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last write: the caller never got a 200 for it
                    await self._replay_line(line, apply, refused, on_quarantine)
                    offset += len(line)
                    await anyio.to_thread.run_sync(_put_offset, off_fd, offset)
                    self.depth = max(0, self.depth - 1)
                    done += 1
        finally:
            os.close(off_fd)
        await anyio.to_thread.run_sync(self._retire, seg)
        return done

    def _open_offset(self, seg: Path) -> int:
        path = self._offset_path(seg)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if created:
            _fsync_dir(self.dir)
        return fd

    def _retire(self, seg: Path) -> None:
        """A segment fully replayed. Its offset goes first: a crash in between replays the
        segment again (harmless), whereas an offset left behind must never meet a later
        segment (names are never reused, and orphans are removed at start-up, too)."""
        self._offset_path(seg).unlink(missing_ok=True)
        seg.unlink()
        _fsync_dir(self.dir)

    async def _replay_line(self, line: bytes, apply: Apply, refused: Refused,
                           on_quarantine: OnQuarantine | None) -> None:
        try:
            item = Spooled.decode(line)
        except _UNREADABLE as e:
            await self._quarantine(Quarantined(line, None, _error_text(e)), on_quarantine)
            return
        try:
            await apply(item)
        except Exception as e:
            if not refused(e):
                raise
            await self._quarantine(Quarantined(line, item, _error_text(e)), on_quarantine)

    async def _quarantine(self, q: Quarantined, on_quarantine: OnQuarantine | None) -> None:
        await anyio.to_thread.run_sync(self._dead_letter, q)  # OSError stops replay: retried
        if on_quarantine is None:
            return
        try:
            await on_quarantine(q)
        except Exception:  # the dead-letter file is the record; the rest is best effort
            log.exception("could not record a quarantined spool item")

    def close(self) -> None:
        self._rotate()
