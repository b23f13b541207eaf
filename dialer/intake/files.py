"""Ingest one lead file: fingerprint, resume or start a batch, stream, finalise, report.

Shared by the inbox watcher, ``dialer ingest`` and uploads. The file's sha256 is its
identity: the same content is never ingested twice, and a file found again after a
crash resumes after the last chunk of the committed prefix (chunks COPY on several
connections at once but commit in file order: ``streams``).

What is read is the file fingerprinted: the parse checks that its own open found that very
file, unchanged (``readers.text``). No symbolic link is followed, but on a path a user
gave ``dialer ingest``.

A user may cancel the batch while its rows are coming in: whenever it lands (between two
chunks, before the finalise, while the ingest was cut off) the ingest stops there and the
file ends ``cancelled``: filed with its report, never read again, none of it dialed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import orjson

from dialer import metrics
from dialer.clock import Clock
from dialer.config import Settings
from dialer.errors import FileReplaced, FileUnreadable
from dialer.intake import batches, streams
from dialer.intake.inbox_names import shown
from dialer.intake.pipeline import ParseJob, chunks_from_process, chunks_from_thread
from dialer.intake.readers import FileId, Fingerprint, detect_format, fingerprint, open_file, unpacked_size
from dialer.store.queries import Q

log = logging.getLogger(__name__)

# Below this size a child process costs more than it saves.
PROCESS_THRESHOLD_BYTES = 2 << 20


def survey(path: Path, fmt: str, *, no_links_below: Path | None = None,
           expect: FileId | None = None) -> tuple[Fingerprint, int]:
    """The file's fingerprint, and how many bytes its parser will see: a workbook's parts are
    read unpacked (its shared strings whole), so a small .xlsx may still need the worker.
    One open for both (``open_file``'s arguments)."""
    with open_file(path, no_links_below=no_links_below, expect=expect, buffering=0) as f:
        fp = fingerprint(f, fmt)
        return fp, (max(fp.size, unpacked_size(f)) if fmt == "xlsx" else fp.size)


def n_rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def cancelled_message(counts: dict[str, int]) -> str:
    """What the report of a file whose batch was cancelled while it was read says."""
    return (f"the batch was cancelled while the file was being received, after "
            f"{n_rows(counts.get('rows', 0))} of it had been read: none of its leads is dialed "
            "(the rows read are cancelled, or rejected as listed; the file was read no further)")


@dataclass
class FileOutcome:
    # ingested | duplicate | cancelled | failed | busy | replaced (the inbox's: not the file
    # its scan saw, or written to since; nothing done, the scan looks at what is there anew)
    kind: str
    name: str
    target: str
    batch_id: uuid.UUID | None = None
    sha256: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    fmt: str | None = None
    first: dict[str, Any] | None = None  # for a duplicate: the first batch's file
    cancelled: bool = False  # for a duplicate: the first batch was cancelled while it was read


class FileIngestor:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, clock: Clock) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock

    async def ingest(
        self,
        path: Path,
        target: str,
        *,
        source: str = "inbox",
        name: str | None = None,
        on_progress: Callable[[int], None] | None = None,
        seen: FileId | None = None,
        follow_links: bool = False,
    ) -> FileOutcome:
        """Ingest the file at ``path``. ``seen``: the file as the inbox's scan saw it (lstat),
        read only if it still is (else ``replaced``). No symbolic link is followed, unless
        ``follow_links`` (a path a user gave ``dialer ingest``: theirs to point anywhere):
        neither at ``path`` nor, for an inbox file, in the inbox's folders (a target folder
        swapped for a link)."""
        name = name or shown(path.name)
        out = FileOutcome(kind="failed", name=name, target=target)
        if target not in self.settings.targets:
            out.error = (
                f"unknown target '{shown(target)}'; configured targets: "
                f"{', '.join(sorted(self.settings.targets))}"
            )
            return out
        fmt = detect_format(name)
        if fmt is None:
            out.error = (
                f"unsupported file type {Path(name).suffix or '(none)'!r}: "
                "expected .csv, .json, .ndjson, .jsonl or .xlsx"
            )
            return out
        out.fmt = fmt
        below = None if follow_links else self._no_links_below(path)
        try:
            fp, parse_size = await anyio.to_thread.run_sync(
                functools.partial(survey, path, fmt, no_links_below=below, expect=seen))
        except FileReplaced as e:
            if seen is not None:  # nothing read yet: the inbox takes what is there now anew
                out.kind = "replaced"
            out.error = e.message
            return out
        except FileUnreadable as e:
            out.error = e.message
            return out
        except OSError as e:
            out.error = f"cannot read file: {e.strerror or e}"
            return out
        out.sha256 = fp.sha256
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(Q.file_try_lock, fp.sha256):
                out.kind = "busy"  # another instance is ingesting this content
                return out
            try:
                return await self._ingest_locked(conn, path, fp, parse_size, out, source, on_progress,
                                                 below)
            finally:
                await conn.execute(Q.file_unlock, fp.sha256)

    def _no_links_below(self, path: Path) -> Path:
        """Where no symbolic link is followed on the way down to ``path``: the inbox for its
        files, else the file's own folder (a console upload's)."""
        return self.settings.inbox if path.is_relative_to(self.settings.inbox) else path.parent

    async def _ingest_locked(
        self,
        conn: asyncpg.Connection,
        path: Path,
        fp: Fingerprint,
        parse_size: int,
        out: FileOutcome,
        source: str,
        on_progress: Callable[[int], None] | None,
        no_links_below: Path | None,
    ) -> FileOutcome:
        target = out.target
        tcfg = self.settings.targets[target]
        now = self.clock.now()
        row = await conn.fetchrow(Q.inbox_file_get, fp.sha256)
        skip = 0
        if row is not None and row["state"] in ("ingested", "filed"):
            out.batch_id = row["batch_id"]
            first = await conn.fetchrow(Q.batch_get, row["batch_id"])
            if row["state"] == "ingested" and row["path"] == os.fsencode(path):
                # finalised (or found cancelled) before a crash, not yet filed: finish the job
                cancelled = first is not None and batches.cancelled_while_receiving(first)
                out.kind = "cancelled" if cancelled else "ingested"
                out.counts = dict(first["counts"]) if first else {}
                return out
            out.kind = "duplicate"
            out.cancelled = first is not None and batches.cancelled_while_receiving(first)
            out.first = {
                "batch_id": str(row["batch_id"]),
                "file": row["name"],
                "target": row["target"],
                "received_at": row["created_at"].isoformat(),
                "filed_path": row["filed_path"] and shown(os.fsdecode(row["filed_path"])),
                "counts": dict(first["counts"]) if first else {},
            }
            return out
        if row is not None and row["state"] == "ingesting":
            batch = await conn.fetchrow(Q.batch_get, row["batch_id"])
            if batch is not None and batches.cancelled_while_receiving(batch):
                # cancelled while cut off (a crash, the database away): the cancel stands, the
                # file is not read again, wherever and for whichever target it is now
                return await self._cancelled(conn, fp, out, batch["id"], source)
            if batch is not None and batch["state"] == "receiving" and batch["target"] == target:
                batch_id = batch["id"]
                skip = batch["rows_read"]
                # where the content is now (renamed in the inbox, say): what a later check
                # for a file gone looks at, should this ingest be cut off again
                await conn.execute(Q.inbox_file_resumed, fp.sha256, os.fsencode(path), out.name)
                log.info("resuming %s at row %d (batch %s)", out.name, skip, batch_id)
            else:
                cut_off = batch if batch is not None and batch["state"] == "receiving" else None
                try:
                    batch_id = await self._restart(conn, fp, out, path, source, now, cut_off)
                except batches.NotReceiving as e:  # the cut-off batch, cancelled meanwhile
                    return await self._cancelled(conn, fp, out, e.batch_id, source)
        elif row is not None:  # failed before: try again from scratch
            batch_id = await self._restart(conn, fp, out, path, source, now)
        else:
            async with conn.transaction():
                batch_id = await batches.create_batch(
                    conn, target=target, source=source, now=now, source_name=out.name,
                    sha256=fp.sha256,
                )
                await conn.execute(
                    Q.inbox_file_insert, fp.sha256, batch_id, out.name, target, os.fsencode(path),
                    fp.size,
                )
        out.batch_id = batch_id
        if on_progress and skip:
            on_progress(skip)
        job = ParseJob(
            fmt=out.fmt or "csv",
            batch_id=str(batch_id),
            rules=batches.rules_for(target, tcfg),
            encoding=fp.encoding,
            skip_rows=skip,
            chunk_rows=self.settings.ingest_commit_rows,
            max_line_bytes=self.settings.max_line_kb * 1024,
            file=fp.file,
            no_links_below=no_links_below,
        )
        chunks = (
            chunks_from_process(path, job)
            if parse_size >= PROCESS_THRESHOLD_BYTES
            else chunks_from_thread(path, job)
        )
        try:
            copied = await streams.copy_in_order(
                conn, self.pool, batch_id, chunks, streams=self.settings.ingest_copy_streams,
                on_progress=on_progress,
            )
        except batches.NotReceiving:  # cancelled between two chunks: the cancel wins
            return await self._cancelled(conn, fp, out, batch_id, source)
        except FileUnreadable as e:
            if not await batches.fail_batch(conn, batch_id, e.message, self.clock.now()):
                return await self._cancelled(conn, fp, out, batch_id, source)
            await conn.execute(Q.inbox_file_state, fp.sha256, "failed", None, self.clock.now())
            out.kind, out.error = "failed", e.message
            return out
        # before finalise's transaction: the table's lock is not held through it
        await batches.fresh_statistics(conn, copied.rows)
        try:
            async with conn.transaction():
                out.counts = await batches.finalise(
                    conn, batch_id, target, tcfg, self.clock.now(),
                    in_file_duplicates=copied.in_file_duplicates,
                    rows=copied.rows if skip == 0 else None,
                    invalid=copied.invalid if skip == 0 else None,
                )
                state = "filed" if source != "inbox" else "ingested"
                await conn.execute(Q.inbox_file_state, fp.sha256, state, None, self.clock.now())
        except batches.NotReceiving:  # cancelled after its last chunk, before its finalise
            return await self._cancelled(conn, fp, out, batch_id, source)
        metrics.current().leads(target, source, out.counts)
        out.kind = "ingested"
        return out

    async def _cancelled(self, conn: asyncpg.Connection, fp: Fingerprint, out: FileOutcome,
                         batch_id: uuid.UUID, source: str) -> FileOutcome:
        """End the ingest of a batch a user cancelled while its rows were coming in: the file
        is done with (filed with a report saying so, never read again: the same content
        dropped again is a duplicate of this batch), its rows read stay cancelled. The outcome
        names the batch's target: the file may have been moved to another target's folder
        since, which is not where it was cancelled."""
        batch = await conn.fetchrow(Q.batch_get, batch_id)
        if batch is None or not batches.cancelled_while_receiving(batch):
            raise RuntimeError(f"batch {batch_id} stopped receiving rows, yet was not cancelled")
        if not batch["counts"]:  # cancelled by an earlier version, which did not count them
            await conn.execute(Q.batch_cancelled_counts, batch_id)
            batch = await conn.fetchrow(Q.batch_get, batch_id)
        state = "filed" if source != "inbox" else "ingested"  # the inbox files it next
        await conn.execute(Q.inbox_file_state, fp.sha256, state, None, self.clock.now())
        out.kind, out.batch_id, out.counts = "cancelled", batch_id, dict(batch["counts"])
        out.target = batch["target"]
        log.info("ingest stopped: its batch was cancelled", extra={
            "file": out.name, "target": batch["target"], "batch_id": str(batch_id),
            "rows_read": batch["rows_read"]})
        return out

    async def _restart(
        self,
        conn: asyncpg.Connection,
        fp: Fingerprint,
        out: FileOutcome,
        path: Path,
        source: str,
        now: Any,
        cut_off: asyncpg.Record | None = None,
    ) -> uuid.UUID:
        """A new batch for the file. ``cut_off``: the batch of an ingest of the same content
        for another target, cut off part-way; it fails (its rows dropped, never dialed), as
        every lead of the file is in the new batch."""
        async with conn.transaction():
            batch_id = await batches.create_batch(
                conn, target=out.target, source=source, now=now, source_name=out.name,
                sha256=fp.sha256,
            )
            await conn.execute(
                Q.inbox_file_restart, fp.sha256, batch_id, out.name, out.target, os.fsencode(path),
                fp.size,
            )
            if cut_off is not None and not await batches.fail_batch(
                    conn, cut_off["id"],
                    f"the file was taken again for target {out.target!r} (batch {batch_id}) before "
                    f"its ingest for {cut_off['target']!r} finished: the {n_rows(cut_off['rows_read'])} "
                    f"read for this batch are not dialed; the file's leads are in batch {batch_id}",
                    now):
                raise batches.NotReceiving(cut_off["id"])  # cancelled meanwhile: rolls this back
        return batch_id

    # -- ingests cut off for good ----------------------------------------------------------
    async def cut_off(self, path: Path | None = None) -> list[asyncpg.Record]:
        """Files whose ingest began and never ended (a crash, the database away), each with
        its batch still receiving rows; ``path``: only those taken from there. Some may be
        being read right now (``abandon`` tells)."""
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(Q.inbox_files_cut_off, None if path is None else os.fsencode(path)))

    async def abandon(self, row: asyncpg.Record, error: str,
                      note: Callable[[], Awaitable[Path | None]]) -> bool:
        """End a cut-off ingest (a ``cut_off`` row) that can never resume: its file is gone.
        Its batch fails with ``error`` and its rows read are dropped, never dialed. ``note``
        writes what tells the user, before the commit (removed if the commit fails), and
        returns where (kept as the file's ``filed_path``). False, and nothing done, if the
        file is being ingested right now or moved on since ``row`` was read."""
        sha = row["sha256"]
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(Q.file_try_lock, sha):
                return False  # being read: not cut off
            try:
                written: Path | None = None
                try:
                    async with conn.transaction():
                        if not await conn.fetchval(Q.inbox_file_still_cut_off, sha, row["batch_id"],
                                                   row["rows_read"]):
                            return False
                        written = await note()
                        now = self.clock.now()
                        await batches.fail_batch(conn, row["batch_id"], error, now)
                        await conn.execute(Q.inbox_file_state, sha, "failed",
                                           None if written is None else os.fsencode(written), now)
                except BaseException:
                    if written is not None:
                        with contextlib.suppress(OSError):
                            written.unlink()
                    raise
            finally:
                await conn.execute(Q.file_unlock, sha)
        return True

    async def mark_filed(self, sha256: str, filed_path: Path) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(Q.inbox_file_state, sha256, "filed", os.fsencode(filed_path),
                               self.clock.now())

    async def mark_failed(self, sha256: str, filed_path: Path) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(Q.inbox_file_state, sha256, "failed", os.fsencode(filed_path),
                               self.clock.now())

    async def write_report(self, outcome: FileOutcome, dest: Path) -> dict[str, Any]:
        """Write ``<name>.report.json`` (streamed: flat memory on any number of rejects)."""
        head: dict[str, Any] = {
            "file": outcome.name,
            "target": outcome.target,
            "sha256": outcome.sha256,
            "format": outcome.fmt,
            "batch_id": str(outcome.batch_id) if outcome.batch_id else None,
            "processed_at": self.clock.now().isoformat(),
        }
        tmp = dest.with_name(dest.name + ".tmp")
        if outcome.kind == "duplicate":
            head["result"] = "duplicate"
            head["duplicate_of"] = outcome.first
            head["message"] = (
                "the same content was already received"
                + (" and its batch cancelled while it was read" if outcome.cancelled else "")
                + "; nothing was ingested again"
            )
            head["counts"] = {"rows": 0, "accepted": 0, "invalid": 0, "duplicate": 0, "dnc": 0}
            head["rejected"] = []
            await anyio.Path(tmp).write_bytes(orjson.dumps(head, option=orjson.OPT_INDENT_2))
        else:
            cancelled = outcome.kind == "cancelled"
            head["result"] = "cancelled" if cancelled else "ingested"
            if cancelled:
                head["message"] = cancelled_message(outcome.counts)
            head["counts"] = outcome.counts
            assert outcome.batch_id is not None
            await self._stream_report(head, outcome.batch_id, tmp,
                                      lead="cancelled" if cancelled else "accepted")
        await anyio.Path(tmp).replace(dest)
        return head

    async def _stream_report(self, head: dict[str, Any], batch_id: uuid.UUID, tmp: Path,
                             lead: str) -> None:
        prefix = orjson.dumps(head, option=orjson.OPT_INDENT_2)[:-2]  # drop "\n}"
        async with self.pool.acquire() as conn:
            f = await anyio.open_file(tmp, "wb")
            try:
                await f.write(prefix + b',\n  "rejected": [')
                sep = b"\n    "
                buf: list[bytes] = []
                async for item in batches.rejected_rows(conn, batch_id, lead=lead):
                    buf.append(sep + orjson.dumps(item))
                    sep = b",\n    "
                    if len(buf) >= 1000:
                        await f.write(b"".join(buf))
                        buf.clear()
                await f.write(b"".join(buf) + (b"\n  ]\n}\n" if sep != b"\n    " else b"]\n}\n"))
            finally:
                await f.aclose()
