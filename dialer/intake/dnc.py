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
stays flat on any size: chunks of ``dnc_lines.CHUNK`` lines, a bounded queue per child.
The merge and the cancel go over the whole file: they run under limits scaled by its
numbers (``limits.bulk_limits``), not the pool's flat command timeout; a lock held past
the wait they allow (a batch's finalise, most likely) ends the import as ``Busy``, a
statement past its limit as ``TimedOut``: either way nothing of it is stored.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import asyncpg

from dialer.config import Target
from dialer.errors import Busy, TimedOut
from dialer.intake.dnc_lines import MAX_SAMPLES, DncChunk, DncJob, iter_part, iter_stream, split_parts
from dialer.intake.pipeline import from_process, from_thread, merged
from dialer.lifecycle import moves, next_number, observe
from dialer.store import limits
from dialer.store.queries import Q

log = logging.getLogger(__name__)

# Below this size a child process costs more than it saves; each part is at least this big.
PROCESS_THRESHOLD_BYTES = 2 << 20
MAX_PARTS = 4


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


# --------------------------------------------------------------------------- import


async def _import(pool: asyncpg.Pool, chunks: AsyncIterator[DncChunk], *, source: str, now: datetime,
                  targets: Mapping[str, Target], on_progress: Callable[[int], None] | None) -> DncReport:
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
        # from here the statements go over the whole file (each COPY above took one chunk):
        # time in proportion to its numbers, a lock wait still bounded
        t = await limits.bulk_limits(conn, report.valid)
        try:
            report.added, report.updated = await _merge(conn, source, now, t)
            await next_number.hold_for_dnc(conn, targets)
            ended = await moves.cancel_for_dnc_import(conn, now, limit_s=t)
            # several-number leads go on
            await next_number.after_dnc_import(conn, targets, now, limit_s=t)
        except asyncpg.LockNotAvailableError as e:
            # a lock held past the wait allowed: most likely a big batch's finalise holding its
            # target's dedupe lock (hold_for_dnc). Nothing of the import is stored.
            raise Busy("the do-not-call import waited too long for a lock another transaction "
                       "holds (a batch being finalised, most likely); nothing of it was stored: "
                       "retry shortly") from e
        except asyncpg.QueryCanceledError as e:
            # a statement ran past the time the file's size allows: the transaction rolls back
            limit = limits.statement_limit_s(report.valid)
            log.warning("do-not-call import stopped: it ran past its time limit", extra={
                "source": source, "numbers": report.valid, "limit_s": limit, "error": str(e)})
            raise TimedOut(f"the do-not-call import was stopped: one of its steps ran past the {limit:g} s "
                           f"its {report.valid} numbers allow; nothing of it was stored: retry later, "
                           "or import the file in smaller parts", {"limit_s": limit}) from e
        report.cancelled_calls = sum(e.n for e in ended)
    observe.ended(ended)
    return report


async def _merge(conn: asyncpg.Connection, source: str, now: datetime, limit_s: float) -> tuple[int, int]:
    """The imported numbers into the list: (added, updated)."""
    await conn.execute(Q.dnc_import_sorted, timeout=limit_s)
    try:
        async with conn.transaction():  # a savepoint
            row = await conn.fetchrow(Q.dnc_import_merge_sorted, source, now, timeout=limit_s)
    except asyncpg.UniqueViolationError:
        # another transaction listed one of these numbers after our snapshot
        row = await conn.fetchrow(Q.dnc_import_merge, source, now, timeout=limit_s)
    return int(row["added"]), int(row["updated"])


async def import_stream(
    pool: asyncpg.Pool,
    stream: BinaryIO,
    *,
    region: str,
    source: str,
    now: datetime,
    targets: Mapping[str, Target],
    default_expiry: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DncReport:
    """A stream normalised in a worker thread (small inputs); ``on_progress``: bytes read."""
    job = DncJob(region, default_expiry, now)
    return await _import(pool, from_thread(iter_stream(stream, job)), source=source, now=now,
                         targets=targets, on_progress=on_progress)


async def import_file(
    pool: asyncpg.Pool,
    path: Path,
    *,
    region: str,
    source: str,
    now: datetime,
    targets: Mapping[str, Target],
    default_expiry: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    parts: int | None = None,
) -> DncReport:
    """A file normalised by child processes, one per part (``parts``: default one per core,
    at most ``MAX_PARTS``, each at least ``PROCESS_THRESHOLD_BYTES``)."""
    size = (await anyio.Path(path).stat()).st_size
    if size < PROCESS_THRESHOLD_BYTES:
        with path.open("rb") as f:
            return await import_stream(pool, f, region=region, source=source, now=now, targets=targets,
                                       default_expiry=default_expiry, on_progress=on_progress)
    if parts is None:
        parts = max(1, min(os.cpu_count() or 1, MAX_PARTS, size // PROCESS_THRESHOLD_BYTES))
    job = DncJob(region, default_expiry, now)
    ranges = await anyio.to_thread.run_sync(split_parts, path, parts)
    async with merged([from_process(iter_part, path, a, b, job) for a, b in ranges]) as chunks:
        return await _import(pool, chunks, source=source, now=now, targets=targets, on_progress=on_progress)


async def import_bytes(pool: asyncpg.Pool, body: bytes, **kwargs: Any) -> DncReport:
    return await import_stream(pool, io.BytesIO(body), **kwargs)


async def add_numbers(pool: asyncpg.Pool, numbers: Sequence[str], *, source: str, now: datetime,
                      targets: Mapping[str, Target], expires_at: datetime | None = None) -> tuple[int, int]:
    """Numbers already in E.164 (the API's JSON list): listed, or their listing extended (the
    longer protection wins: see dnc_add), and
    their calls not yet sent cancelled in every target, in one transaction. Returns
    (added, updated)."""
    async with pool.acquire() as conn, conn.transaction():
        # as an import's: a batch's finalise holding its target's dedupe lock past the wait
        # allowed is Busy (not the pool's timeout, which reads as the database away)
        await limits.bulk_limits(conn, 0)
        try:
            rows = await conn.fetch(Q.dnc_add, list(numbers), source, now, expires_at)
            await next_number.hold_for_dnc(conn, targets)
            cancelled = await moves.cancel_for_dnc(conn, numbers, now, {"rule": "dnc", "by": source})
            await next_number.after_dnc(conn, list(numbers), targets, now)  # several-number leads go on
        except asyncpg.LockNotAvailableError as e:
            raise Busy("the numbers waited too long for a lock another transaction holds (a batch "
                       "being finalised, most likely); none of them was listed: retry shortly") from e
        except asyncpg.QueryCanceledError as e:
            limit = limits.statement_limit_s(0)
            log.warning("do-not-call listing stopped: it ran past its time limit", extra={
                "source": source, "numbers": len(numbers), "limit_s": limit, "error": str(e)})
            raise TimedOut(f"listing the numbers was stopped: one of its steps ran past its {limit:g} s "
                           "limit; none of them was listed: retry later, or send fewer at a time",
                           {"limit_s": limit}) from e
    observe.ended(cancelled)
    added = sum(1 for x in rows if x["inserted"])
    return added, len(rows) - added


async def remove(pool: asyncpg.Pool, e164: str) -> bool:
    """Take a number off the list; False if it was not on it."""
    async with pool.acquire() as conn:
        return await conn.fetchval(Q.dnc_delete, e164) is not None
