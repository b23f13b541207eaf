"""Batch completion, and the results file sales ops get back.

When every call of a batch has ended, the batch is ``done`` and, for a batch that came
from the inbox, ``<name>.results.csv`` is written beside its report: one row per lead
(its latest attempt).
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from pathlib import Path

import anyio
import asyncpg

from dialer.clock import Clock
from dialer.store.queries import Q

log = logging.getLogger(__name__)

COLUMNS = ("number", "external_id", "state", "outcome", "attempts", "agent", "ended_at")


async def write_results_csv(conn: asyncpg.Connection, batch_id: uuid.UUID, dest: Path) -> int:
    """Stream the batch's per-lead results to ``dest`` (atomically); returns rows written."""
    tmp = dest.with_name(dest.name + ".tmp")
    n = 0
    f = await anyio.open_file(tmp, "w", encoding="utf-8", newline="")
    try:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(COLUMNS)
        async with conn.transaction():
            async for r in conn.cursor(Q.batch_results, batch_id, prefetch=2000):
                w.writerow([
                    r["e164"] or r["raw_number"] or "", r["external_id"] or "", r["state"],
                    r["outcome"] or "", r["attempts"], r["agent"] or "",
                    r["ended_at"].isoformat() if r["ended_at"] else "",
                ])
                n += 1
                if n % 2000 == 0:
                    await f.write(buf.getvalue())
                    buf.seek(0)
                    buf.truncate()
        await f.write(buf.getvalue())
    finally:
        await f.aclose()
    await anyio.Path(tmp).replace(dest)
    return n


class Completion:
    """Notices batches whose calls have all ended."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock
        self.touched: set[uuid.UUID] = set()
        self._all_checked = False

    def touch(self, batch_id: object) -> None:
        if isinstance(batch_id, uuid.UUID):
            self.touched.add(batch_id)

    async def check(self) -> list[uuid.UUID]:
        """Check touched batches (and, once after start-up, every open batch)."""
        async with self.pool.acquire() as conn:
            if not self._all_checked:
                self.touched.update(r["id"] for r in await conn.fetch(Q.batches_open))
                self._all_checked = True
            ids, self.touched = list(self.touched), set()
            done = []
            for bid in ids:
                if await self.finish(conn, bid):
                    done.append(bid)
        return done

    async def finish(self, conn: asyncpg.Connection, batch_id: uuid.UUID) -> bool:
        if await conn.fetchval(Q.batch_has_live_calls, batch_id):
            return False
        row = await conn.fetchrow(Q.batch_done, batch_id, self.clock.now())
        if row is None:
            return False
        log.info("batch done", extra={"batch_id": str(batch_id)})
        if row["source"] == "inbox":
            f = await conn.fetchrow(Q.inbox_file_for_batch, batch_id)
            if f is not None and f["filed_path"]:
                filed = Path(f["filed_path"])
                dest = filed.with_name(filed.name + ".results.csv")
                try:
                    await write_results_csv(conn, batch_id, dest)
                    await conn.execute(Q.batch_set_results_path, batch_id, str(dest))
                except OSError as e:
                    log.error("could not write results file", extra={"error": str(e), "path": str(dest)})
        return True
