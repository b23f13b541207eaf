"""A local, fsync'd spool for callbacks that arrive while PostgreSQL is unreachable.

Ryng retries a terminal callback only twice, a minute apart, so a database outage of a
few minutes must not lose callbacks: each one is appended to a segment file and fsync'd
*before* we answer 200, then replayed in arrival order when the database returns.
While anything is spooled, new callbacks are spooled too, so order is kept.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Spooled:
    kind: str
    chunk_id: int
    content_type: str
    body: bytes
    received_at: str

    def encode(self) -> bytes:
        return orjson.dumps({
            "kind": self.kind, "chunk_id": self.chunk_id, "ctype": self.content_type,
            "body": base64.b64encode(self.body).decode(), "at": self.received_at,
        }) + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Spooled:
        d: dict[str, Any] = orjson.loads(line)
        return cls(d["kind"], int(d["chunk_id"]), d["ctype"], base64.b64decode(d["body"]), d["at"])


class Spool:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = anyio.Lock()
        self._fd: int | None = None
        self._active: Path | None = None
        self.depth = self._count()
        self.wake = anyio.Event()

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))

    def _offset_path(self, seg: Path) -> Path:
        return seg.with_suffix(".offset")

    def _offset(self, seg: Path) -> int:
        try:
            return int(self._offset_path(seg).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _count(self) -> int:
        n = 0
        for seg in self._segments():
            with seg.open("rb") as f:
                f.seek(self._offset(seg))
                n += sum(1 for line in f if line.endswith(b"\n"))
        return n

    def _open_new(self) -> None:
        segs = self._segments()
        nxt = int(segs[-1].stem.split("-")[1]) + 1 if segs else 1
        self._active = self.dir / f"seg-{nxt:08d}.jsonl"
        self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new file's directory entry is durable too
        finally:
            os.close(dfd)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._open_new()
        assert self._fd is not None
        os.write(self._fd, data)
        os.fsync(self._fd)

    async def append(self, item: Spooled) -> None:
        """Durably store one callback; raises OSError (e.g. disk full) if it cannot."""
        data = item.encode()
        async with self._lock:
            await anyio.to_thread.run_sync(self._write, data)
            self.depth += 1
        self.wake.set()

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._active = None

    async def replay(self, apply: Callable[[Spooled], Awaitable[None]]) -> int:
        """Apply spooled callbacks oldest first; stops (raising) at the first failure."""
        done = 0
        async with self._lock:
            self._rotate()  # new arrivals go to a fresh segment while we replay
            segments = self._segments()
        for seg in segments:
            offset = self._offset(seg)
            with seg.open("rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last write: the caller never got a 200 for it
                    await apply(Spooled.decode(line))
                    offset += len(line)
                    self._offset_path(seg).write_text(str(offset))
                    self.depth -= 1
                    done += 1
            seg.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._offset_path(seg).unlink()
        return done

    def close(self) -> None:
        self._rotate()
