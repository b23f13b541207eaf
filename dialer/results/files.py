"""Batch completion, and the results file sales ops get back.

When every call of a batch has ended, the batch is ``done`` and, for a batch that came
from the inbox, ``<name>.results.csv`` is written beside its report: one row per lead
(its latest attempt). Text from outside (the number as typed, the external id, the
provider's disposition and agent) goes through ``cells.csv_text``: never a live formula.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg

from dialer.clock import Clock
from dialer.lifecycle import moves, number_report, observe
from dialer.lifecycle.observe import Ended
from dialer.results.cells import csv_text
from dialer.store.queries import Q

log = logging.getLogger(__name__)

COLUMNS = ("number", "external_id", "state", "outcome", "attempts", "agent", "ended_at",
           "number_reached", "attempts_per_number")


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
                # outside text through csv_text; the rest is ours (a state, a count, a time, E.164)
                w.writerow([
                    csv_text(r["e164"] or r["raw_number"] or ""), csv_text(r["external_id"] or ""),
                    r["state"], csv_text(r["outcome"] or ""), r["attempts"], csv_text(r["agent"] or ""),
                    r["ended_at"].isoformat() if r["ended_at"] else "",
                    *number_report.result_cells(r),
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


# How long a finalised inbox batch waits for its file to be filed before it may end without
# a results file (the filing normally follows the finalise within a second)
FILING_GRACE = timedelta(minutes=10)


class Completion:
    """Notices batches whose calls have all ended, whatever ended them (SPEC §6).

    Every ending reaches ``observe.ended`` after its commit and touches its batch; a
    sweep of every open batch (at start-up, after an ingest, and every ``sweep_s``)
    catches what ended elsewhere (another instance, an intake that rejected every row).
    """

    def __init__(self, pool: asyncpg.Pool, clock: Clock, sweep_s: float = 30.0) -> None:
        self.pool = pool
        self.clock = clock
        self.sweep_s = sweep_s
        self.touched: set[uuid.UUID] = set()
        self._next_sweep = 0.0  # monotonic; 0: at the first check

    def touch(self, batch_id: object) -> None:
        if isinstance(batch_id, uuid.UUID):
            self.touched.add(batch_id)

    def on_ended(self, items: Sequence[Ended]) -> None:
        """``observe.subscribe``: look at the batches of calls that just ended."""
        for e in items:
            self.touch(e.batch_id)

    def sweep_soon(self) -> None:
        """A batch was just ingested (it may have nothing to dial): sweep at the next check."""
        self._next_sweep = 0.0

    async def check(self) -> list[uuid.UUID]:
        """Check touched batches (and, when a sweep is due, every open batch)."""
        async with self.pool.acquire() as conn:
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.sweep_s
                self.touched.update(r["id"] for r in await conn.fetch(Q.batches_open))
            ids, self.touched = list(self.touched), set()
            done = []
            try:
                for bid in ids:
                    if await self.finish(conn, bid):
                        done.append(bid)
            except BaseException:
                self.touched.update(ids)  # not lost: looked at again next time
                raise
        return done

    async def finish(self, conn: asyncpg.Connection, batch_id: uuid.UUID) -> bool:
        b = await conn.fetchrow(Q.batch_get, batch_id)
        if b is not None and b["state"] == "cancelled" and b["ended_at"] is None:
            # a cancel reaches later attempts too (a recycle or re-queue made after it)
            async with conn.transaction():
                ended = await moves.cancel_batch(conn, batch_id, self.clock.now(), "cancel")
            if ended:
                observe.ended(ended)
                log.info("cancelled later attempts of a cancelled batch",
                         extra={"batch_id": str(batch_id), "calls": len(ended)})
        if await conn.fetchval(Q.batch_has_live_calls, batch_id):
            return False
        inbox = b is not None and b["source"] == "inbox"
        f = await conn.fetchrow(Q.inbox_file_for_batch, batch_id) if inbox else None
        if f is not None and f["state"] == "ingested" and b is not None and b["ingested_at"] is not None \
                and self.clock.now() - b["ingested_at"] < FILING_GRACE:
            # finalised, its file not yet moved beside its report: the results go there, so
            # wait for the filing (it sweeps again); a file never filed ends without them
            return False
        row = await conn.fetchrow(Q.batch_done, batch_id, self.clock.now())
        if row is None:
            return False
        log.info("batch done", extra={"batch_id": str(batch_id)})
        if row["source"] == "inbox":
            f = await conn.fetchrow(Q.inbox_file_for_batch, batch_id)  # filed meanwhile, maybe
            if f is not None and f["filed_path"]:
                filed = Path(f["filed_path"])
                dest = filed.with_name(filed.name + ".results.csv")
                try:
                    await write_results_csv(conn, batch_id, dest)
                    await conn.execute(Q.batch_set_results_path, batch_id, str(dest))
                except OSError as e:
                    log.error("could not write results file", extra={"error": str(e), "path": str(dest)})
        return True
