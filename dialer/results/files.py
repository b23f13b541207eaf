"""Batch completion, and the results file sales ops get back.

When every call of a batch has ended, the batch is ``done`` and, for a batch that came
from the inbox, ``<name>.results.csv`` is written beside its report: one row per lead
(its latest attempt). Text from outside (the number as typed, the external id, the
provider's disposition and agent) goes through ``cells.csv_text``: never a live formula.
The commit that makes the batch done also records the file as owed
(``results_due_at``); only a write renamed into place clears it. A write that fails (a
directory in the way, a full disk), or a crash or database blip between that commit and
the write, leaves it owed: the sweep retries it with backoff, on any instance, after a
restart too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import asyncpg

from dialer.clock import Clock
from dialer.intake.inbox_names import shown
from dialer.lifecycle import moves, number_report, observe
from dialer.lifecycle.observe import Ended
from dialer.results.cells import csv_text
from dialer.store.queries import Q
from dialer.store.retry import DB_DOWN

log = logging.getLogger(__name__)

COLUMNS = ("number", "external_id", "state", "outcome", "attempts", "agent", "ended_at",
           "number_reached", "attempts_per_number")


async def write_results_csv(conn: asyncpg.Connection, batch_id: uuid.UUID, dest: Path) -> int:
    """Stream the batch's per-lead results to ``dest`` (atomically); returns rows written.

    On any failure the ``.tmp`` beside ``dest`` is removed: nothing half-done is left there.
    """
    tmp = anyio.Path(dest.with_name(dest.name + ".tmp"))
    n = 0
    try:
        async with await anyio.open_file(tmp, "w", encoding="utf-8", newline="") as f:
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
        await tmp.replace(dest)
    except BaseException:
        # the error that matters is the one raised (a cancel too: shielded)
        with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
            await tmp.unlink(missing_ok=True)
        raise
    return n


# A results file that could not be written is tried again after this (doubling per
# failure, up to RESULTS_RETRY_MAX): its batch stays done, the file stays owed.
RESULTS_RETRY_FIRST = timedelta(seconds=30)
RESULTS_RETRY_MAX = timedelta(hours=1)


def results_backoff(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed write a results file is tried again."""
    doublings = min(max(0, attempts - 1), 20)
    return min(RESULTS_RETRY_MAX, RESULTS_RETRY_FIRST * (1 << doublings))


async def write_owed_results(conn: asyncpg.Connection, batch_id: uuid.UUID, now: datetime) -> Path | None:
    """Write a batch's owed results file if it is due; returns its path once written.

    One writer per batch across instances (an advisory lock held with the transaction);
    the file is marked written only after its rename, in the same transaction. A write
    that fails is logged and left owed, due again after ``results_backoff``.
    """
    async with conn.transaction():
        if not await conn.fetchval(Q.results_file_lock, batch_id):
            return None  # another instance is writing it now
        owed = await conn.fetchrow(Q.results_file_owed, batch_id, now)
        if owed is None:
            return None  # written meanwhile, or waiting out its backoff
        filed = Path(os.fsdecode(owed["filed_path"]))  # its bytes: a name may not be UTF-8
        dest = filed.with_name(filed.name + ".results.csv")
        try:
            # a savepoint: a statement that fails on this batch's rows is undone, while the
            # lock and the retry's record below stay in this transaction
            async with conn.transaction():
                await write_results_csv(conn, batch_id, dest)
        except Exception as e:
            if isinstance(e, DB_DOWN) and not _file_error(e):
                raise  # the database is away: the sweep's supervisor waits for it
            # a file error, or a fault of this batch's rows (the database's refusal of a
            # statement too, every time, maybe): left owed with its backoff, so it never
            # holds up the files owed after it
            attempts = owed["results_attempts"] + 1
            wait = results_backoff(attempts)
            await conn.execute(Q.results_file_retry, batch_id, attempts, now + wait)
            log.warning("could not write results file; it will be retried",
                        exc_info=not isinstance(e, OSError),
                        extra={"batch_id": str(batch_id), "path": str(dest), "error": str(e),
                               "attempt": attempts, "retry_in_s": wait.total_seconds()})
            return None
        await conn.execute(Q.results_file_written, batch_id, shown(dest))  # for people: text
    if owed["results_attempts"]:
        log.info("results file written after earlier failures", extra={
            "batch_id": str(batch_id), "path": str(dest), "attempt": owed["results_attempts"] + 1})
    return dest


def _file_error(e: Exception) -> bool:
    """An ``OSError`` of the file being written (a full disk, a directory in the way), not
    one of the database's connection."""
    return isinstance(e, OSError) and not isinstance(e, ConnectionError | TimeoutError)


# How long a finalised inbox batch waits for its file to be filed before it may end without
# a results file (the filing normally follows the finalise within a second)
FILING_GRACE = timedelta(minutes=10)


class Completion:
    """Notices batches whose calls have all ended, whatever ended them (SPEC §6).

    Every ending reaches ``observe.ended`` after its commit and touches its batch; a
    sweep of every open batch (at start-up, after an ingest, and every ``sweep_s``)
    catches what ended elsewhere (another instance, an intake that rejected every row).
    The same sweep writes the results files still owed and due (see the module's doc).
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
            owed: list[uuid.UUID] = []
            if self.clock.monotonic() >= self._next_sweep:
                self._next_sweep = self.clock.monotonic() + self.sweep_s
                self.touched.update(r["id"] for r in await conn.fetch(Q.batches_open))
                owed = [r["id"] for r in await conn.fetch(Q.batches_results_due, self.clock.now())]
            ids, self.touched = list(self.touched), set()
            done = []
            try:
                for bid in ids:
                    if await self.finish(conn, bid):
                        done.append(bid)
            except BaseException:
                self.touched.update(ids)  # not lost: looked at again next time
                raise
            for bid in owed:  # a failed write, or a crash before it (an earlier run's too)
                await write_owed_results(conn, bid, self.clock.now())
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
        if row["results_owed"]:  # filed (meanwhile, maybe): owed from that commit, written now
            await write_owed_results(conn, batch_id, self.clock.now())
        return True
