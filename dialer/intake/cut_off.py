"""Ingests cut off part-way whose file is gone: none stays ``receiving`` for good.

A file's ingest cut off part-way (a crash, a kill -9, the database away) resumes when the
file is taken again, from the rows it committed. One whose file is gone never can: the
inbox file removed (or something other than a file put in its place), saved over with
other content, or a console upload whose request ended (nothing else reads it). Its
batch would wait as ``receiving`` forever: never dialed, never reported, a ``receiving``
hold in the target's waiting counts. Instead it fails, its rows read are dropped (never
dialed; the error says how many there were), and an inbox file gets
``failed/<name>.error.txt``. A file now in its place is a drop of its own.

Looked for at the inbox's first scan, then every ``CHECK_S`` (another instance sharing the
inbox may have died, a file been removed while its retries waited for the database); a
replacement when the file in its place is taken. Only this instance's files: those under
its inbox and its uploads folder (``dialer ingest`` may run on another host: run again,
it resumes). A file being read holds its lock, so it is never taken for one cut off.
A batch a user cancelled meanwhile is not receiving: it is never abandoned, the cancel
stands (its file, taken again, is filed as cancelled: ``files``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from dialer import metrics
from dialer.errors import FileUnreadable
from dialer.intake.files import n_rows
from dialer.intake.inbox_names import RESERVED, shown
from dialer.intake.readers import FileId, open_file
from dialer.intake.readers.text import read_blocks

if TYPE_CHECKING:
    from dialer.intake.inbox import Inbox

log = logging.getLogger(__name__)

CHECK_S = 60.0
RETRY_S = 5.0  # after a check the database did not answer


class CutOff:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.root = inbox.root
        self.ingestor = inbox.ingestor
        # where this instance's console uploads are read from (``Console.incoming``)
        self.uploads = inbox.settings.state_dir / "uploads" / ".incoming"
        self._check_at = float("-inf")
        self._hashes: dict[FileId, str] = {}

    async def check_if_due(self) -> None:
        now = self.inbox.clock.monotonic()
        if now < self._check_at:
            return
        self._check_at = now + CHECK_S
        try:
            await self.abandon_gone()
        except Exception as e:
            self._check_at = now + RETRY_S
            log.warning("cut-off ingests not checked; trying again", exc_info=e,
                        extra={"retry_in_s": RETRY_S})

    async def abandon_gone(self) -> int:
        """Abandon the cut-off ingests whose file is gone; returns how many."""
        if not await anyio.Path(self.root).is_dir():  # an unmounted share: every file would look gone
            return 0
        gone = [(row, why) for row in await self.ingestor.cut_off()
                if (why := await anyio.to_thread.run_sync(self._gone, row)) is not None]
        sizes = {row["size"] for row, _ in gone if self._in_inbox(row)}
        # its content may wait elsewhere in the inbox (renamed, moved to another target's
        # folder): taken there, it resumes, or starts over for its new target
        waiting = await anyio.to_thread.run_sync(self._waiting, sizes) if sizes else set()
        done = 0
        for row, why in gone:
            if not (self._in_inbox(row) and row["sha256"] in waiting) and await self._abandon(row, why):
                done += 1
        return done

    async def abandon_replaced(self, path: Path, sha256: str) -> None:
        """Abandon the cut-off ingests of content that was at ``path`` and is no longer: the
        file now there (``sha256``) is a drop of its own."""
        name = self._inbox_name(path)
        if name is None:
            return
        for row in await self.ingestor.cut_off(path):
            if row["sha256"] == sha256:
                continue
            await self._abandon(row, (
                f"the file {name} was replaced by a different file (sha256 {sha256}) before its "
                f"ingest finished: the {n_rows(row['rows_read'])} of the first file read so far are "
                "not dialed; the file now in its place is taken as a drop of its own"))

    def _gone(self, row: Any) -> str | None:
        """Why ``row``'s ingest can never resume; None if it still may (or we cannot tell)."""
        path, read = _path(row), n_rows(row["rows_read"])
        if path.parent == self.uploads:
            return (f"the upload of {row['name']} was cut off before its ingest finished: the "
                    f"{read} of it read so far are not dialed; upload the file again to dial its leads")
        name = self._inbox_name(path)
        if name is None:
            return None  # another instance's inbox or uploads, or `dialer ingest`
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                return None  # still there: the scan resumes it, or finds it replaced
        except FileNotFoundError:
            pass
        except OSError:
            return None
        return (f"the file {name} was removed from the inbox before its ingest finished: the "
                f"{read} of it read so far are not dialed; drop the file again to dial its leads")

    def _waiting(self, sizes: set[int | None]) -> set[str]:
        """The sha256 of the files waiting in the inbox whose size is one of ``sizes`` (None:
        any size). Hashes are kept while a file is unchanged: one waiting behind a backlog
        is read once, not at every check."""
        found: set[str] = set()
        hashes: dict[FileId, str] = {}
        for path, _ in self.inbox.candidates():
            try:
                key = FileId.of(path.lstat())
                if None not in sizes and key.size not in sizes:
                    continue
                sha = self._hashes.get(key)
                if sha is None:  # read only if still that file: a link put there is not followed
                    h = hashlib.sha256()
                    with open_file(path, no_links_below=self.root, expect=key, buffering=0) as f:
                        for block in read_blocks(f, 1 << 20):
                            h.update(block)
                    sha = h.hexdigest()
            except (OSError, FileUnreadable):
                continue
            hashes[key] = sha
            found.add(sha)
        self._hashes = hashes
        return found

    async def _abandon(self, row: Any, error: str) -> bool:
        inbox = self._in_inbox(row)

        async def note() -> Path | None:
            if not inbox:  # an upload: the console shows the batch's error
                return None
            # named as the file was (its own bytes), said as its name is shown
            _, written = await self.inbox.failed_note(_path(row).name, (
                f"{row['name']}: {error}\ntarget: {row['target']}\nbatch: {row['batch_id']} (failed)\n"))
            return written

        if not await self.ingestor.abandon(row, error, note):
            return False  # being read right now, or already moved on
        if inbox:
            metrics.current().inbox_file(row["target"], "failed")
        else:  # the cut-off upload's own copy, which nothing will read
            with contextlib.suppress(OSError):
                await anyio.Path(_path(row)).unlink()
        log.warning("cut-off ingest abandoned: its file is gone", extra={
            "file": row["name"], "target": row["target"], "batch_id": str(row["batch_id"]),
            "rows_read": row["rows_read"], "error": error})
        return True

    def _in_inbox(self, row: Any) -> bool:
        return self._inbox_name(_path(row)) is not None

    def _inbox_name(self, path: Path) -> str | None:
        """``path`` as the inbox names it (``x.csv``, ``sales/x.csv``) if the scan takes files
        from there; else None."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return None
        ok = len(rel.parts) == 1 or (len(rel.parts) == 2 and rel.parts[0] not in RESERVED)
        return shown(rel) if ok else None


def _path(row: Any) -> Path:
    """Where a ``cut_off`` row's file was taken from (stored as its bytes)."""
    return Path(os.fsdecode(row["path"]))
