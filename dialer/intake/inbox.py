"""The inbox directory: sales ops drop files, the daemon takes them once they settle.

``INBOX/<target>/<file>`` goes to that target, ``INBOX/<file>`` to the default target.
A file is taken when its size and mtime have been still for ``settle_s``, or at once
when it was renamed in (inotify ``IN_MOVED_TO``). Results land in
``processed/<YYYY-MM-DD>/`` (file + ``.report.json``; a file whose batch was cancelled
while it was read too, its report saying so) or ``failed/`` (+ ``.error.txt``).
A symbolic link is never followed (it could point anywhere on the host): once settled, the
link itself is moved to ``failed/`` with a note saying so; so is a named pipe, socket or
device node, never opened (opening a FIFO waits for a writer). A file is read only if it is still
the one the scan took (``FileIngestor.ingest``'s ``seen``): one replaced (by a link, say) or
written to before its read began is looked at anew at the next scan; one replaced while it
was read fails, and what is in its place is a drop of its own.

An ingest cut off part-way (a crash, the database away) resumes when its file is taken
again; one whose file is gone never can (``cut_off``).
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from dialer import metrics
from dialer.clock import Clock
from dialer.config import Settings
from dialer.intake.cut_off import CutOff
from dialer.intake.files import FileIngestor, FileOutcome
from dialer.intake.inbox_names import RESERVED, ignored, shown
from dialer.intake.readers import FileId, folder_fd

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float
    moved_in: bool = False


# room kept in a name for what is written beside it (``<name>.report.json.tmp``, the longest:
# also ``.results.csv.tmp``) and for unique_path's ``-99999``
_BESIDE_BYTES = len(".report.json.tmp") + len("-99999")
_EXT_BYTES = 16  # a longer "extension" is part of the name, cut like the rest


def fit_name(name: str, limit: int) -> str:
    """``name`` in at most ``limit`` bytes: the stem cut on a character boundary, the
    extension kept (file systems count a name's bytes, not its characters; a name's bytes
    that are not UTF-8 stay as they are)."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, dot, ext = raw.rpartition(b".")
    if not dot or not stem or len(ext) + 1 > min(_EXT_BYTES, limit - 1):
        stem, dot, ext = raw, b"", b""
    cut = stem[:limit - len(dot) - len(ext)]
    _, whole = codecs.utf_8_decode(cut, "surrogateescape", False)  # a character cut short: dropped
    return os.fsdecode(cut[:whole] + dot + ext)


def name_max(directory: Path) -> int:
    """The longest file name, in bytes, that ``directory``'s file system takes."""
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def unique_path(directory: Path, name: str) -> Path:
    """``name`` in ``directory``, or ``stem-2.ext`` … when taken (never overwrite); cut so
    that it, and the files written beside it, fit the file system's longest name. A name
    is taken by a file, or by a report or error note beside it (a note may stand alone:
    that of a file gone before its ingest finished)."""
    name = fit_name(name, max(32, name_max(directory) - _BESIDE_BYTES))

    def free(n: str) -> bool:  # lexists: a link in failed/, even a broken one, takes its name
        return not any(os.path.lexists(directory / f"{n}{beside}")
                       for beside in ("", ".report.json", ".error.txt"))

    if free(name):
        return directory / name
    stem, dot, ext = name.partition(".")
    for i in range(2, 100_000):
        cand = f"{stem}-{i}{dot}{ext}"
        if free(cand):
            return directory / cand
    raise RuntimeError(f"no free name for {name} in {directory}")


class Inbox:
    def __init__(
        self,
        settings: Settings,
        ingestor: FileIngestor,
        clock: Clock,
        on_ingested: Callable[[], None] | None = None,
    ) -> None:
        self.on_ingested = on_ingested
        self.settings = settings
        self.root = settings.inbox
        self.ingestor = ingestor
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._retry: dict[Path, tuple[int, float]] = {}  # path → (failures, not before)
        self._wake = anyio.Event()
        self.files_done = 0
        self.accepting = True
        self.current: Path | None = None
        self.cut_off = CutOff(self)

    def ensure_dirs(self) -> None:
        for d in (self.root, self.root / "processed", self.root / "failed"):
            d.mkdir(parents=True, exist_ok=True)
        for name in self.settings.targets:
            (self.root / name).mkdir(exist_ok=True)

    # -- discovery -------------------------------------------------------------
    def candidates(self) -> list[tuple[Path, str]]:
        """Files waiting in the inbox with the target each one goes to."""
        return [(path, target) for path, target, kind in self.waiting() if kind == FILE]

    def waiting(self) -> list[tuple[Path, str, str]]:
        """What waits in the inbox but folders: the target each one goes to, and what it is
        (``FILE``, ``LINK``: never followed, or ``SPECIAL``: a pipe, socket or device, never
        opened; both go to ``failed/``)."""
        found: list[tuple[Path, str, str]] = []
        with os.scandir(self.root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if ignored(e.name) or e.name in RESERVED:
                continue
            if e.is_dir(follow_symlinks=False):
                with os.scandir(e.path) as sub:
                    for f in sorted(sub, key=lambda x: x.name):
                        if not ignored(f.name) and not f.is_dir(follow_symlinks=False):
                            found.append((Path(f.path), e.name, _kind(f)))
            else:
                found.append((Path(e.path), self.settings.default_target, _kind(e)))
        return found

    def settled(self, path: Path) -> bool:
        try:
            st = path.lstat()  # a link's own: it is never followed
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        now = self.clock.monotonic()
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            moved = seen.moved_in if seen else False
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now, moved)
            return moved and seen is None
        return seen.moved_in or now - seen.since >= self.settings.settle_s

    def note_moved_in(self, path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, self.clock.monotonic(), True)

    async def scan_once(self) -> int:
        """Take every settled file; returns how many were handled."""
        handled = 0
        for path, target, kind in await anyio.to_thread.run_sync(self.waiting):
            if not self.accepting:
                break
            retry = self._retry.get(path)
            if retry and self.clock.monotonic() < retry[1]:
                continue
            if self.settled(path):
                try:
                    if kind == LINK:
                        await self.refuse_link(path, target)
                    elif kind == SPECIAL:
                        await self.refuse_special(path, target)
                    else:
                        await self.handle(path, target)
                except Exception as e:
                    self._internal_failure(path, target, e)
                    continue
                self._retry.pop(path, None)
                self._seen.pop(path, None)
                handled += 1
        if self.accepting:  # after the files: one renamed in the inbox resumes first
            await self.cut_off.check_if_due()
        return handled

    def _internal_failure(self, path: Path, target: str, exc: Exception) -> None:
        """Not the file's fault (database down, worker crash): back off and try again.

        Rows already committed are kept, so a later attempt resumes where this one stopped.
        """
        tries = self._retry.get(path, (0, 0.0))[0] + 1
        metrics.current().inbox_file(target, "retry")
        delay = min(60.0, 0.5 * 2**tries)
        self._retry[path] = (tries, self.clock.monotonic() + delay)
        log.warning(
            "inbox file will be retried",
            exc_info=exc,
            extra={"file": shown(path.name), "target": shown(target), "attempt": tries, "retry_in_s": delay},
        )

    # -- one file ----------------------------------------------------------------
    async def handle(self, path: Path, target: str) -> FileOutcome:
        self.current = path
        taken = _identity(path, self.root)
        try:
            if taken is None:  # removed since the scan
                outcome = FileOutcome(kind="replaced", name=shown(path.name), target=target)
            else:
                outcome = await self.ingestor.ingest(path, target, source="inbox", seen=taken)
            if outcome.sha256 and outcome.kind != "busy":
                await self.cut_off.abandon_replaced(path, outcome.sha256)
            await self._file(path, outcome, taken)
        finally:
            self.current = None
        self.files_done += 1
        return outcome

    async def _file(self, path: Path, outcome: FileOutcome, taken: FileId | None) -> None:
        if outcome.kind == "busy":
            return
        if outcome.kind == "replaced":  # nothing read: what is there now settles as a new drop
            log.info("inbox file changed or replaced before it was read; looked at again at the "
                     "next scan", extra={"file": outcome.name, "error": outcome.error})
            return
        assert taken is not None  # else nothing was read: "replaced"
        metrics.current().inbox_file(outcome.target, outcome.kind)
        if outcome.kind == "failed":
            dest, _ = await self.failed_note(path.name, (
                f"{outcome.name}: {outcome.error}\n"
                f"target: {shown(outcome.target)}\n"
                "Nothing from this file was ingested. Fix it and drop it into the inbox again.\n"
            ))
            await self._take_away(path, taken, dest, outcome.name)
            if outcome.sha256 and outcome.batch_id:
                with contextlib.suppress(Exception):
                    await self.ingestor.mark_failed(outcome.sha256, dest)
            log.warning("inbox file failed", extra={"file": outcome.name, "error": outcome.error})
            return
        day = self.clock.now().astimezone().date().isoformat()
        dest_dir = self.root / "processed" / day
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = unique_path(dest_dir, path.name)
        await self.ingestor.write_report(outcome, dest.with_name(dest.name + ".report.json"))
        await self._take_away(path, taken, dest, outcome.name)
        if outcome.kind in ("ingested", "cancelled") and outcome.sha256:
            await self.ingestor.mark_filed(outcome.sha256, dest)
            if self.on_ingested and outcome.kind == "ingested":
                self.on_ingested()
        log.info(
            "inbox file %s", outcome.kind,
            extra={"file": outcome.name, "batch_id": str(outcome.batch_id), **outcome.counts},
        )

    async def _take_away(self, path: Path, taken: FileId, dest: Path, name: str) -> None:
        """Move the file read from ``path`` to ``dest``, if ``path`` still names it. A file put
        in its place (or none: deleted) while it was read is not the one read: it stays (a new
        drop, taken at a later scan); the report or note still goes where it would. Looked up
        and renamed relative to its folder, opened from the inbox down without following a
        link: a target folder swapped for a link to one holding a hard link of the file never
        has what is outside the inbox moved."""
        if not await anyio.to_thread.run_sync(_move_if_still, path, self.root, taken, dest):
            log.warning("inbox file was replaced or removed while it was read; a file now in its "
                        "place is taken as a new drop", extra={"file": name})

    async def failed_note(self, name: str, text: str) -> tuple[Path, Path]:
        """Write ``text`` as ``failed/<name>.error.txt`` (the name made free); returns where the
        file itself goes beside it, and the note."""
        dest_dir = self.root / "failed"
        await anyio.Path(dest_dir).mkdir(parents=True, exist_ok=True)
        dest = unique_path(dest_dir, name)
        note = dest.with_name(dest.name + ".error.txt")
        # "x": a name taken since (a link put there) is an error, never written through
        async with await anyio.open_file(note, "x", encoding="utf-8") as f:
            await f.write(text)
        return dest, note

    async def refuse_link(self, path: Path, target: str) -> None:
        """Move the symbolic link at ``path`` itself into ``failed/``, with a note saying why:
        nothing is read through it, and what it points to is left alone. One removed or
        replaced on the way is forgotten (a file in its place is a drop of its own)."""
        try:
            st = os.lstat(path)
            to = os.readlink(path)
        except OSError:  # gone, or no longer a link, since the scan
            return
        name, to = shown(path.name), shown(to)
        where = "the inbox" if path.parent == self.root else f"the inbox's {shown(path.parent.name)}/ folder"
        dest, note = await self.failed_note(path.name, (
            f"{name} is a symbolic link (to {to}); the inbox does not follow links: move or copy "
            f"the file itself into {where}.\n"
            f"target: {shown(target)}\n"
            "Nothing was read through the link and the file it points to was not touched: the "
            "link itself was moved here.\n"
        ))
        if not self._move_refused(path, st, dest, note):
            return
        metrics.current().inbox_file(target, "failed")
        log.warning("inbox symbolic link not followed: moved to failed/",
                    extra={"file": name, "link_to": to, "target": shown(target),
                           "moved_to": shown(dest.name)})

    async def refuse_special(self, path: Path, target: str) -> None:
        """Move the named pipe, socket or device node at ``path`` into ``failed/``, with a note
        saying what it is. It is never opened: opening a FIFO waits for a writer, a device may
        be anything. One removed or replaced on the way is forgotten (as ``refuse_link``)."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        what = special_kind(st.st_mode)
        if what is None:  # a file or a link since the scan: looked at anew at the next one
            return
        name = shown(path.name)
        dest, note = await self.failed_note(path.name, (
            f"{name} is {what}, not a file: the inbox reads only regular files (CSV, JSON, "
            "xlsx).\n"
            f"target: {shown(target)}\n"
            "Nothing was read from it (it was never opened): it was moved here as it was.\n"
        ))
        if not self._move_refused(path, st, dest, note):
            return
        metrics.current().inbox_file(target, "failed")
        log.warning("inbox entry is not a file: moved to failed/",
                    extra={"file": name, "is": what, "target": shown(target),
                           "moved_to": shown(dest.name)})

    @staticmethod
    def _move_refused(path: Path, st: os.stat_result, dest: Path, note: Path) -> bool:
        """Rename what ``path`` names to ``dest`` if it is still what ``st`` describes (rename
        neither follows a link nor opens anything); else remove ``note``, written for it, and
        False. An error: the note removed, raised (retried later: ``_internal_failure``)."""
        try:
            now = os.lstat(path)
            # replaced since (a file put there, say): not what the note describes
            same = (stat.S_IFMT(now.st_mode) == stat.S_IFMT(st.st_mode)
                    and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino))
            if same:
                os.rename(path, dest)
        except FileNotFoundError:
            same = False
        except OSError:  # no note left for it meanwhile
            with contextlib.suppress(OSError):
                note.unlink()
            raise
        if not same:
            with contextlib.suppress(OSError):
                note.unlink()
        return same

    # -- the loop ------------------------------------------------------------------
    async def run(self) -> None:
        self.ensure_dirs()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            while self.accepting:
                try:
                    await self.scan_once()
                except Exception:
                    log.exception("inbox scan failed; retrying")
                with anyio.move_on_after(self.settings.inbox_poll_s):
                    await self._wake.wait()
                self._wake = anyio.Event()
            tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        """Wake the scanner on inotify events; mark renamed-in files as ready at once."""
        try:
            from inotify_simple import INotify
            from inotify_simple import flags as F
        except ImportError:  # pragma: no cover - non-Linux
            return
        ino = INotify()
        mask = F.MOVED_TO | F.CLOSE_WRITE | F.CREATE
        wds: dict[int, Path] = {}
        try:
            for d in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
                if d.name in RESERVED:
                    continue
                wds[ino.add_watch(str(d), mask)] = d
            while True:
                await anyio.wait_readable(ino.fileno())
                for ev in ino.read(timeout=0):
                    base = wds.get(ev.wd)
                    if base is None or not ev.name:
                        continue
                    p = base / ev.name
                    if ev.mask & F.ISDIR and ev.mask & (F.CREATE | F.MOVED_TO) and base == self.root:
                        if ev.name not in RESERVED:
                            wds[ino.add_watch(str(p), mask)] = p
                        continue
                    if ev.mask & F.MOVED_TO and not ignored(ev.name):
                        self.note_moved_in(p)
                self._wake.set()
        finally:
            ino.close()


FILE, LINK, SPECIAL = "file", "link", "special"

_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a unix socket"),
            (stat.S_ISBLK, "a block device node"), (stat.S_ISCHR, "a character device node"))


def special_kind(mode: int) -> str | None:
    """What a pipe, socket or device node is, in words; None for a file, link or folder."""
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "a special file")


def _kind(e: os.DirEntry[str]) -> str:
    if e.is_symlink():
        return LINK
    if e.is_file(follow_symlinks=False):
        return FILE
    return SPECIAL  # not a folder either (the caller's): a pipe, socket or device node


def _identity(path: Path, root: Path) -> FileId | None:
    """Which file, in which version, ``path`` names now (a link: itself, never followed,
    nor is one on the way from ``root`` down: ``folder_fd``); None if none."""
    try:
        at, name = folder_fd(path, root)
    except OSError:  # a folder on the way gone, or swapped for a link
        return None
    try:
        return FileId.of(os.stat(name, dir_fd=at, follow_symlinks=False))
    except OSError:
        return None
    finally:
        if at is not None:
            os.close(at)


def _move_if_still(path: Path, root: Path, taken: FileId, dest: Path) -> bool:
    """Rename the file at ``path`` to ``dest`` if it is still ``taken``: looked up and renamed
    through its folder, found from ``root`` down without following a link; False, nothing
    moved, if it is not."""
    try:
        at, name = folder_fd(path, root)
    except OSError:
        return False
    try:
        try:
            now = FileId.of(os.stat(name, dir_fd=at, follow_symlinks=False))
        except OSError:
            return False
        if now != taken:
            return False
        os.replace(name, dest, src_dir_fd=at)  # the entry itself, never through a link
        return True
    finally:
        if at is not None:
            os.close(at)
