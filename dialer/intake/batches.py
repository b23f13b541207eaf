"""The database side of intake: batches, COPY of lead chunks, and the set-based finalise.

Rows stream into ``leads`` chunk by chunk, each chunk committed together with the
batch's resume point (``rows_read``), so a crash loses nothing and doubles nothing.
Calls are only created by ``finalise``, one transaction that collapses in-batch
duplicates, applies the target's dedupe window and the DNC list, and inserts the calls:
until then nothing of the batch can be dialed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dialer.config import Target
from dialer.intake.leads import COPY_COLUMNS, TargetRules
from dialer.intake.pipeline import Chunk
from dialer.store.queries import Q

OUTCOMES = ("accepted", "invalid", "duplicate", "dnc")


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
    conn: asyncpg.Connection, batch_id: uuid.UUID, chunk: Chunk, target: str, now: datetime
) -> int:
    """COPY one chunk, create its calls and move the resume point, in one transaction.

    Returns rows_read. The calls are not dispatchable until the batch is finalised.
    """
    async with conn.transaction():
        # a memoryview, not BytesIO: asyncpg keeps file-like sources alive until a full GC
        await conn.copy_to_table(
            "leads", source=memoryview(chunk.data), columns=list(COPY_COLUMNS), format="text"
        )
        if chunk.rows > chunk.invalid:
            await conn.execute(Q.chunk_insert_calls, batch_id, target, chunk.first_line,
                               chunk.last_line, now)
        rows_read = await conn.fetchval(Q.batch_add_rows, batch_id, chunk.rows)
        if rows_read is None:
            raise RuntimeError(f"batch {batch_id} is no longer receiving rows")
        return int(rows_read)


async def finalise(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    target_name: str,
    target: Target,
    now: datetime,
) -> dict[str, int]:
    """Settle the batch: drop the calls of duplicate and DNC leads; returns counts by outcome.

    Must run inside a transaction (the caller may add its own writes to it).
    """
    await conn.execute(Q.batch_lock_target, target_name)
    await conn.execute(Q.finalise_collapse_in_batch, batch_id)
    window_start = now - timedelta(hours=target.dedupe_window_h)
    await conn.execute(Q.finalise_dedupe_target, batch_id, target_name, window_start)
    await conn.execute(Q.finalise_dnc, batch_id, now)
    counts = await lead_counts(conn, batch_id)
    await conn.execute(Q.finalise_batch, batch_id, counts, now)
    return counts


async def lead_counts(conn: asyncpg.Connection, batch_id: uuid.UUID) -> dict[str, int]:
    by = {r["status"]: r["n"] for r in await conn.fetch(Q.lead_status_counts, batch_id)}
    counts = {
        "rows": sum(by.values()),
        "accepted": by.get("ok", 0),
        "invalid": by.get("invalid", 0),
        "duplicate": by.get("duplicate", 0),
        "dnc": by.get("dnc", 0),
    }
    return counts


async def fail_batch(
    conn: asyncpg.Connection, batch_id: uuid.UUID, error: str, now: datetime
) -> None:
    async with conn.transaction():
        await conn.execute(Q.batch_drop_leads, batch_id)
        await conn.execute(Q.batch_drop_calls, batch_id)
        await conn.execute(Q.batch_fail, batch_id, error, now)


async def rejected_rows(
    conn: asyncpg.Connection, batch_id: uuid.UUID, prefetch: int = 2000
) -> AsyncIterator[dict[str, Any]]:
    """Every row that will not be dialed, in line order (a server-side cursor: flat memory)."""
    async with conn.transaction():
        async for r in conn.cursor(Q.batch_rejected_rows, batch_id, prefetch=prefetch):
            yield {
                "line": r["line"],
                "outcome": r["status"],
                "reason": r["reason"],
                "number": r["raw_number"],
            }
