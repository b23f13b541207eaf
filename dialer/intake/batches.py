"""The database side of intake: batches, COPY of lead chunks, and the set-based finalise.

Rows stream into ``calls`` (one row per input row: the lead and its first attempt)
chunk by chunk, each chunk committed together with the batch's resume point
(``rows_read``), so a crash loses nothing and doubles nothing. ``finalise`` is one
transaction that collapses in-batch duplicates and applies the target's dedupe window
and the DNC list; until the batch is finalised nothing of it is dispatched. Its
statements, and those dropping a failed batch's rows, grow with the batch: they run under
limits scaled by its rows (``batch_limits``), not the pool's flat command timeout.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dialer.config import Target
from dialer.intake import number_checks
from dialer.intake.leads import COPY_COLUMNS, TargetRules
from dialer.intake.pipeline import Chunk
from dialer.intake.readers.csvfile import CONTINUED
from dialer.lifecycle import moves
from dialer.store import limits
from dialer.store.queries import Q

log = logging.getLogger(__name__)

OUTCOMES = ("accepted", "invalid", "duplicate", "dnc")
_REJECTED = frozenset(OUTCOMES[1:])
_CONTINUED = [p + "%" for p in CONTINUED]


def rules_for(name: str, target: Target) -> TargetRules:
    return TargetRules(
        name=name,
        default_region=target.default_region,
        agent_mapping=target.agent_mapping,
        agents=tuple(target.agents),
    )


async def create_batch(
    conn: asyncpg.Connection,
    *,
    target: str,
    source: str,
    now: datetime,
    source_name: str | None = None,
    sha256: str | None = None,
    result_webhook_url: str | None = None,
) -> uuid.UUID:
    bid: uuid.UUID = await conn.fetchval(
        Q.batch_insert, target, source, source_name, sha256, result_webhook_url, now
    )
    return bid


async def copy_chunk(
    conn: asyncpg.Connection, batch_id: uuid.UUID, chunk: Chunk, *, durable: bool = True
) -> int:
    """COPY one chunk, create its calls and move the resume point, in one transaction.

    Returns rows_read. The calls are not dispatchable until the batch is finalised.
    """
    async with conn.transaction():
        if not durable:
            # Safe without waiting for the WAL flush: the rows and the resume point commit
            # together, so a PostgreSQL crash loses both and the file is re-read from there.
            # The finalise that makes the batch dialable is a normal, durable commit.
            await conn.execute(Q.chunk_async_commit)
        # a memoryview, not BytesIO: asyncpg keeps file-like sources alive until a full GC
        await conn.copy_to_table(
            "calls", source=memoryview(chunk.data), columns=list(COPY_COLUMNS), format="text"
        )
        return await _add_rows(conn, batch_id, chunk.rows)


async def copy_chunk_in_turn(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    chunk: Chunk,
    data: bytes,
    before_commit: Callable[[], Awaitable[None]],
    *,
    with_ids: bool,
) -> int:
    """COPY one chunk (``data``: its lines, each with its id first when ``with_ids``),
    then await ``before_commit`` (the chunk ahead committed) and move the resume point,
    in one transaction whose commit does not wait for the WAL flush (see ``copy_chunk``).

    Returns rows_read. ``before_commit`` raising rolls the chunk back.
    """
    columns = ["id", *COPY_COLUMNS] if with_ids else list(COPY_COLUMNS)
    async with conn.transaction():
        await conn.execute(Q.chunk_async_commit)
        await conn.copy_to_table("calls", source=memoryview(data), columns=columns, format="text")
        await before_commit()
        return await _add_rows(conn, batch_id, chunk.rows)


class NotReceiving(Exception):
    """The batch is no longer receiving rows: a user cancelled it while its file was read
    (nothing else moves a batch an ingest holds the file lock of). Raised inside the chunk's
    or the finalise's transaction, which rolls back."""

    def __init__(self, batch_id: uuid.UUID) -> None:
        super().__init__(f"batch {batch_id} is no longer receiving rows")
        self.batch_id = batch_id


def cancelled_while_receiving(batch: Any) -> bool:
    """A batch (``batch_get`` row) cancelled before it was finalised: its ingest stopped
    there, and nothing of it is ever dialed (done, once completion saw it)."""
    return batch["state"] in ("cancelled", "done") and batch["ingested_at"] is None


async def _add_rows(conn: asyncpg.Connection, batch_id: uuid.UUID, rows: int) -> int:
    rows_read = await conn.fetchval(Q.batch_add_rows, batch_id, rows)
    if rows_read is None:
        raise NotReceiving(batch_id)
    return int(rows_read)


async def batch_limits(conn: asyncpg.Connection, batch_id: uuid.UUID) -> float:
    """``limits.bulk_limits`` for the batch's rows, for the rest of the caller's transaction;
    returns the client-side ``timeout`` its calls must pass."""
    rows = await conn.fetchval(Q.batch_rows_read, batch_id) or 0
    return await limits.bulk_limits(conn, int(rows))


async def finalise(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    target_name: str,
    target: Target,
    now: datetime,
    *,
    in_file_duplicates: bool | None = None,
    rows: int | None = None,
    invalid: int | None = None,
    new_rows: int = 0,
) -> dict[str, int]:
    """Settle the batch: mark duplicate and DNC leads, so they never dial; returns counts.

    Must run inside a transaction (the caller may add its own writes to it). When the
    reader saw the whole input it passes what it knows (no repeated number, row and
    invalid counts), which spares full scans of a big batch. ``new_rows``: rows this
    ingest wrote (see ``fresh_statistics``). The rest of the transaction runs under the
    batch's ``batch_limits``.
    """
    await fresh_statistics(conn, new_rows)
    t = await batch_limits(conn, batch_id)  # after the ANALYZE: it resets lock_timeout
    await conn.execute(Q.batch_lock_target, target_name, timeout=t)
    # a cancel that came first wins; one coming now waits for this commit (batch_mark_cancelled)
    if await conn.fetchval(Q.batch_lock_state, batch_id, timeout=t) != "receiving":
        raise NotReceiving(batch_id)
    window_start = now - timedelta(hours=target.dedupe_window_h)
    # several-number leads first: each number on its own, before the set-based pass
    several = await number_checks.check(conn, batch_id, target_name, window_start, now, limit_s=t)
    dup, dnc = await moves.classify_intake(conn, batch_id, target_name, window_start, now,
                                           collapse=in_file_duplicates is not False,
                                           dnc=bool(await conn.fetchval(Q.dnc_any, timeout=t)), limit_s=t)
    dup, dnc = dup + several[0], dnc + several[1]
    if rows is not None and invalid is not None and in_file_duplicates is not None:
        counts = {"rows": rows, "accepted": rows - invalid - dup - dnc, "invalid": invalid,
                  "duplicate": dup, "dnc": dnc}
    else:
        counts = await lead_counts(conn, batch_id, limit_s=t)
    await conn.execute(Q.finalise_batch, batch_id, counts, now, timeout=t)
    return counts


# A batch at least this big, and a fifth of the table's rows as last counted, is worth an
# ANALYZE before its finalise (about 0.1 s for 600,000 rows)
ANALYZE_MIN_ROWS = 10_000


async def fresh_statistics(conn: asyncpg.Connection, new_rows: int) -> None:
    """ANALYZE ``calls`` when ``new_rows`` just written outweigh what the planner knows.
    Autovacuum analyzes only a minute or so later; before that a fresh table has no
    statistics at all, and the finalise's self-joins planned as nested loops over the whole
    batch: a 600,000-row file with duplicates ran past the 60 s statement timeout."""
    if new_rows < ANALYZE_MIN_ROWS:
        return
    known = await conn.fetchval(Q.calls_rows_estimate)
    if known >= 0 and new_rows <= known / 5:  # -1: never analyzed
        return
    try:
        # its own transaction, or a savepoint in the caller's: the wait for the table's
        # lock (another ANALYZE or a VACUUM holds it) is bounded, and over if it fails
        async with conn.transaction():
            await conn.execute(Q.analyze_lock_wait)
            await conn.execute(Q.calls_analyze)
            await conn.execute(Q.analyze_lock_wait_done)
    except asyncpg.LockNotAvailableError:
        log.info("calls not analyzed before a finalise: another session holds its lock",
                 extra={"rows": new_rows})


async def lead_counts(conn: asyncpg.Connection, batch_id: uuid.UUID, *,
                      limit_s: float | None = None) -> dict[str, int]:
    by = {r["state"]: r["n"] for r in await conn.fetch(Q.intake_counts, batch_id, timeout=limit_s)}
    rejected = by.get("invalid", 0) + by.get("duplicate", 0) + by.get("dnc", 0)
    counts = {
        "rows": sum(by.values()),
        "accepted": sum(by.values()) - rejected,
        "invalid": by.get("invalid", 0),
        "duplicate": by.get("duplicate", 0),
        "dnc": by.get("dnc", 0),
    }
    return counts


async def fail_batch(
    conn: asyncpg.Connection, batch_id: uuid.UUID, error: str, now: datetime
) -> bool:
    """Fail a batch still receiving rows: its rows are dropped, never dialed. False, and
    nothing done, if it is not receiving (a user's cancel came first: it stands)."""
    async with conn.transaction():
        t = await batch_limits(conn, batch_id)  # a file found unreadable after many rows
        if await conn.fetchval(Q.batch_lock_state, batch_id, timeout=t) != "receiving":
            return False
        await moves.drop_batch_calls(conn, batch_id, limit_s=t)
        await conn.execute(Q.batch_fail, batch_id, error, now, timeout=t)
    return True


async def rejected_rows(
    conn: asyncpg.Connection, batch_id: uuid.UUID, prefetch: int = 2000, *, indexed: bool = False,
    lead: str = "accepted",
) -> AsyncIterator[dict[str, Any]]:
    """Every row that will not be dialed, in line order (a server-side cursor: flat memory).
    ``indexed``: each also with its ``index`` among the batch's records (API batches).
    ``lead``: what became of a lead some of whose numbers were left out (``cancelled``: its
    batch was, while its rows were coming in)."""
    query, args = ((Q.batch_rejected_rows_indexed, (batch_id, _CONTINUED)) if indexed
                   else (Q.batch_rejected_rows, (batch_id,)))
    async with conn.transaction():
        async for r in conn.cursor(query, *args, prefetch=prefetch):
            at = {"line": r["line"], **({"index": r["ordinal"]} if indexed else {})}
            if r["state"] in _REJECTED:
                yield {**at, "outcome": r["state"], "reason": r["reason"], "number": r["raw_number"]}
                continue
            # an accepted lead some of whose numbers were left out: each, by its column
            for note in (r["number_notes"] or {}).get("rejected", []):
                yield {**at, "outcome": note["outcome"], "reason": note["reason"],
                       "number": note["number"], "field": note["field"], "lead": lead}
