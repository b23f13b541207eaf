"""Do-not-call list imports: one number per line (or ``number,expires_at`` CSV), such as
the 10-digit area-code files of national registries.

Streamed: lines are normalised in chunks, COPY'd into a temporary table, then merged
(deduplicated, latest expiry wins) with one statement; calls not yet sent to a newly
listed number are cancelled in the same transaction. Memory stays flat on any size.

What people and CRMs write to the list goes through here: these imports (``dialer dnc
import``, the API's text body, the console), ``add_numbers`` for the API's JSON list, and
``remove``. (A disposition that lists a number does it inside its callback's transaction,
in ``lifecycle/ended.py``.)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import asyncpg

from dialer.intake import phones
from dialer.lifecycle import moves, next_number, observe
from dialer.store.queries import Q

CHUNK = 50_000
MAX_SAMPLES = 100
_ESC = str.maketrans({"\\": "", "\t": "", "\n": "", "\r": "", "\x00": ""})


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


def _parse_expiry(text: str) -> datetime | None:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def chunks(stream: BinaryIO, region: str, report: DncReport,
           default_expiry: datetime | None = None) -> Iterator[bytes]:
    """Yield COPY text (line, e164, expires_at) in chunks; fills ``report`` as it goes."""
    reader = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    buf: list[str] = []
    first = True
    for n, raw in enumerate(reader, start=1):
        report.lines = n
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        number, _, rest = line.replace(";", ",").replace("\t", ",").partition(",")
        number = number.strip().strip('"')
        if first:
            first = False
            if not any(ch.isdigit() for ch in number):
                continue  # a header line
        e164, why = phones.normalise(number, region)
        expiry = default_expiry
        if e164 is not None and rest.strip():
            try:
                expiry = _parse_expiry(rest.split(",")[0].strip('" '))
            except ValueError:
                e164, why = None, f"expires_at {rest.strip()[:40]!r} is not an ISO date"
        if e164 is None:
            report.invalid += 1
            if len(report.invalid_samples) < MAX_SAMPLES:
                report.invalid_samples.append({"line": n, "value": line[:64].translate(_ESC),
                                               "reason": why})
            continue
        report.valid += 1
        buf.append(f"{n}\t{e164}\t{expiry.isoformat() if expiry else chr(92) + 'N'}\n")
        if len(buf) >= CHUNK:
            yield "".join(buf).encode()
            buf = []
    if buf:
        yield "".join(buf).encode()


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
    report = DncReport()
    it = chunks(stream, region, report, default_expiry)
    done = object()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.dnc_import_table)
        while True:
            data = await anyio.to_thread.run_sync(lambda: next(it, done))
            if data is done:
                break
            assert isinstance(data, bytes)
            await conn.copy_to_table("dnc_import", source=memoryview(data),
                                     columns=["line", "e164", "expires_at"], format="text")
            if on_progress:
                on_progress(report.lines)
        row = await conn.fetchrow(Q.dnc_import_merge, source, now)
        report.added, report.updated = row["added"], row["updated"]
        ended = await moves.cancel_for_dnc_import(conn, now)
        report.cancelled_calls = sum(e.n for e in ended)
    observe.ended(ended)
    return report


async def import_file(pool: asyncpg.Pool, path: Path, **kwargs: Any) -> DncReport:
    with path.open("rb") as f:
        return await import_stream(pool, f, **kwargs)


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
