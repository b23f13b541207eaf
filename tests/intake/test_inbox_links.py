"""Symbolic links dropped into the inbox, against a real inbox directory and PostgreSQL: never
followed (a link could point anywhere on the host), never silently ignored either. Once settled,
the link itself goes to failed/ with a note saying what it points to and what to do; nothing is
read through it and what it points to is left as it was. The same for a link (or another file)
put in a file's place between the scan and the read, or between the fingerprint and the parse:
the bytes parsed are those fingerprinted."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dialer import metrics
from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake import files
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from tests.intake.test_inbox import drop, report, settle_and_scan

LEADS = "number\n+14155550100\n+14155550101\n"
REFUSED = "inbox symbolic link not followed: moved to failed/"


@pytest.fixture
def counted(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> metrics.Metrics:
    """The metrics the inbox counts into, as the daemon's."""
    m = metrics.Metrics(settings.targets)
    monkeypatch.setattr(metrics, "_current", m)
    return m


def link(inbox: Inbox, name: str, to: str | Path, target: str | None = None) -> Path:
    d = inbox.root / target if target else inbox.root
    d.mkdir(parents=True, exist_ok=True)
    (d / name).symlink_to(to)
    return d / name


def failed_files(m: metrics.Metrics, target: str = "sales") -> float | None:
    return m.registry.get_sample_value("dialer_inbox_files_total", {"target": target, "result": "failed"})


async def nothing_ingested(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for table in ("batches", "inbox_files", "leads", "calls"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


@pytest.mark.parametrize(("target", "where"), [(None, "the inbox"), ("sales", "the inbox's sales/ folder")])
async def test_a_link_to_a_lead_file_goes_to_failed_saying_why_and_its_file_is_left_alone(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, tmp_path: Path, counted: metrics.Metrics,
        caplog: pytest.LogCaptureFixture, target: str | None, where: str) -> None:
    src = tmp_path / "data" / "leads.csv"
    src.parent.mkdir()
    src.write_text(LEADS)
    before = os.stat(src)
    ln = link(inbox, "leads.csv", src, target)
    with caplog.at_level(logging.WARNING, logger="dialer.intake.inbox"):
        assert await inbox.scan_once() == 0  # first sighting: it settles like any file
        assert ln.is_symlink()
        clock.advance(inbox.settings.settle_s + 0.01)
        assert await inbox.scan_once() == 1
        assert await settle_and_scan(inbox, clock) == 0  # once
    moved = inbox.root / "failed" / "leads.csv"
    assert moved.is_symlink() and os.readlink(moved) == str(src)
    assert not os.path.lexists(ln)
    assert (inbox.root / "failed" / "leads.csv.error.txt").read_text() == (
        f"leads.csv is a symbolic link (to {src}); the inbox does not follow links: move or copy the "
        f"file itself into {where}.\n"
        "target: sales\n"
        "Nothing was read through the link and the file it points to was not touched: the link "
        "itself was moved here.\n")
    after = os.stat(src)
    assert src.read_text() == LEADS
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_mtime_ns,
                                                                   before.st_ctime_ns)
    assert sorted(p.name for p in (inbox.root / "failed").iterdir()) == ["leads.csv", "leads.csv.error.txt"]
    assert list((inbox.root / "processed").iterdir()) == []
    await nothing_ingested(pool)
    assert failed_files(counted) == 1
    assert [r.getMessage() for r in caplog.records] == [REFUSED]


async def test_a_broken_link_goes_to_failed_the_same_way(inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool,
                                                        counted: metrics.Metrics) -> None:
    link(inbox, "gone.csv", "../exports/gone.csv")  # relative, as `ln -s` was given it; nothing there
    assert await settle_and_scan(inbox, clock) == 1
    moved = inbox.root / "failed" / "gone.csv"
    assert moved.is_symlink() and os.readlink(moved) == "../exports/gone.csv"
    assert (inbox.root / "failed" / "gone.csv.error.txt").read_text().startswith(
        "gone.csv is a symbolic link (to ../exports/gone.csv); the inbox does not follow links: move or "
        "copy the file itself into the inbox.\n")
    await nothing_ingested(pool)
    assert failed_files(counted) == 1


async def test_a_link_to_a_folder_is_not_scanned_but_goes_to_failed(inbox: Inbox, clock: FakeClock,
                                                                   pool: asyncpg.Pool, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.csv").write_text(LEADS)
    link(inbox, "more", elsewhere)
    assert await settle_and_scan(inbox, clock) == 1
    assert os.readlink(inbox.root / "failed" / "more") == str(elsewhere)
    assert (elsewhere / "x.csv").read_text() == LEADS
    await nothing_ingested(pool)


@pytest.mark.parametrize("name", [".hidden.csv", "y.part", "x.tmp", "BIG.TMP"])
@pytest.mark.parametrize("target", [None, "sales"])
async def test_a_link_with_a_name_the_inbox_ignores_stays_ignored(inbox: Inbox, clock: FakeClock, tmp_path: Path,
                                                                   name: str, target: str | None) -> None:
    src = tmp_path / "leads.csv"
    src.write_text(LEADS)
    ln = link(inbox, name, src, target)
    assert await settle_and_scan(inbox, clock) == 0
    assert ln.is_symlink()
    assert list((inbox.root / "failed").iterdir()) == []


async def test_a_link_named_like_what_failed_holds_overwrites_nothing(inbox: Inbox, clock: FakeClock,
                                                                      tmp_path: Path) -> None:
    failed = inbox.root / "failed"
    (failed / "leads.csv").write_text("an earlier failed file")
    (failed / "leads-2.csv.error.txt").write_text("a note whose file is gone")
    (failed / "leads-3.csv").symlink_to("nowhere.csv")  # an earlier broken link, its note deleted
    victim = tmp_path / "victim.txt"
    (failed / "leads-4.csv.error.txt").symlink_to(victim)  # a note written through it would create victim
    link(inbox, "leads.csv", "../new.csv")
    assert await settle_and_scan(inbox, clock) == 1
    assert os.readlink(failed / "leads-5.csv") == "../new.csv"
    assert (failed / "leads-5.csv.error.txt").read_text().startswith("leads.csv is a symbolic link (to ../new.csv)")
    assert (failed / "leads.csv").read_text() == "an earlier failed file"
    assert (failed / "leads-2.csv.error.txt").read_text() == "a note whose file is gone"
    assert os.readlink(failed / "leads-3.csv") == "nowhere.csv"
    assert os.readlink(failed / "leads-4.csv.error.txt") == str(victim) and not victim.exists()
    assert len(list(failed.iterdir())) == 6


async def test_a_link_removed_before_it_is_moved_is_forgotten(inbox: Inbox, clock: FakeClock,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             counted: metrics.Metrics) -> None:
    ln = link(inbox, "brief.csv", "/data/leads.csv")
    real = Inbox.failed_note

    async def then_removed(self: Inbox, *args: Any) -> Any:
        out = await real(self, *args)
        ln.unlink()  # `rm inbox/brief.csv` between the scan and the move
        return out

    monkeypatch.setattr(Inbox, "failed_note", then_removed)
    await settle_and_scan(inbox, clock)
    assert not os.path.lexists(ln)  # it was on its way to failed/
    assert list((inbox.root / "failed").iterdir()) == []  # no note about a link no longer there
    assert failed_files(counted) == 0
    assert await settle_and_scan(inbox, clock) == 0


async def test_a_link_replaced_by_a_file_before_it_is_moved_leaves_the_file_as_a_drop(
        inbox: Inbox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    ln = link(inbox, "swap.csv", "/data/leads.csv")
    real = Inbox.failed_note

    async def then_replaced(self: Inbox, *args: Any) -> Any:
        out = await real(self, *args)
        if ln.is_symlink():  # `cp /data/leads.csv inbox/swap.csv` after `rm`, while the note was written
            ln.unlink()
            ln.write_text(LEADS)
        return out

    monkeypatch.setattr(Inbox, "failed_note", then_replaced)
    await settle_and_scan(inbox, clock)
    assert ln.read_text() == LEADS and not ln.is_symlink()
    assert list((inbox.root / "failed").iterdir()) == []
    assert await settle_and_scan(inbox, clock) == 1  # the file, taken as a drop of its own
    assert not ln.exists()


async def test_a_link_that_cannot_be_moved_now_is_retried_and_the_inbox_goes_on(
        inbox: Inbox, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, counted: metrics.Metrics) -> None:
    ln = link(inbox, "a.csv", "/data/leads.csv")
    drop(inbox, "b.csv", LEADS)
    rename = os.rename

    def full(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", full)
    assert await settle_and_scan(inbox, clock) == 1  # b.csv, behind it
    assert ln.is_symlink() and list((inbox.root / "failed").iterdir()) == []  # no note left behind
    assert counted.registry.get_sample_value("dialer_inbox_files_total",
                                             {"target": "sales", "result": "retry"}) == 1
    monkeypatch.setattr(os, "rename", rename)
    clock.advance(60)
    assert await inbox.scan_once() == 1
    assert os.readlink(inbox.root / "failed" / "a.csv") == "/data/leads.csv"


# -- a file swapped between the scan and its read -----------------------------------------------
OTHER = "number\n+14155550199\n"  # what a link put in a lead file's place points to


def swap(path: Path, how: str, other: Path) -> None:
    """Put something else where the inbox saw ``path``: ``ln -sf other path``, or ``mv other path``."""
    if how == "link":
        path.unlink()
        path.symlink_to(other)
    else:
        os.replace(other, path)


async def numbers(pool: asyncpg.Pool) -> set[str]:
    async with pool.acquire() as conn:
        return {r["e164"] for r in await conn.fetch("SELECT e164 FROM calls")}


@pytest.mark.parametrize("target", [None, "sales"])
async def test_a_file_swapped_for_a_link_before_its_read_is_not_read_through_it(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        counted: metrics.Metrics, target: str | None) -> None:
    """The link put there once the scan took the file ends as one dropped: settled, then moved
    to failed/ with its note; what it points to is never read."""
    elsewhere = tmp_path / "secret.csv"
    elsewhere.write_text(OTHER)
    path = drop(inbox, "leads.csv", LEADS, target)
    real = FileIngestor.ingest

    async def swapped_first(self: FileIngestor, *args: Any, **kwargs: Any) -> Any:
        if not path.is_symlink():
            swap(path, "link", elsewhere)  # between the scan's look and the read
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(FileIngestor, "ingest", swapped_first)
    assert await settle_and_scan(inbox, clock) == 1
    assert path.is_symlink() and list((inbox.root / "failed").iterdir()) == []  # nothing read, no note
    await nothing_ingested(pool)
    assert await settle_and_scan(inbox, clock) == 1  # the link, settled in its turn
    assert os.readlink(inbox.root / "failed" / "leads.csv") == str(elsewhere)
    assert (inbox.root / "failed" / "leads.csv.error.txt").read_text().startswith(
        f"leads.csv is a symbolic link (to {elsewhere}); the inbox does not follow links")
    await nothing_ingested(pool)
    assert failed_files(counted) == 1 and elsewhere.read_text() == OTHER


async def test_a_target_folder_swapped_for_a_link_before_the_read_is_not_read_through(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "leads.csv").write_text(OTHER)  # the same name, in the folder the link points to
    drop(inbox, "leads.csv", LEADS, "sales")
    folder = inbox.root / "sales"
    real = FileIngestor.ingest

    async def swapped_first(self: FileIngestor, *args: Any, **kwargs: Any) -> Any:
        if not folder.is_symlink():  # `mv sales sales.old; ln -s /elsewhere sales`
            folder.rename(tmp_path / "sales.old")
            folder.symlink_to(elsewhere)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(FileIngestor, "ingest", swapped_first)
    await settle_and_scan(inbox, clock)
    await nothing_ingested(pool)
    assert await settle_and_scan(inbox, clock) == 1  # the folder's link, refused as any link
    assert os.readlink(inbox.root / "failed" / "sales") == str(elsewhere)
    await nothing_ingested(pool)
    assert (elsewhere / "leads.csv").read_text() == OTHER


@pytest.mark.parametrize("reader", ["thread", "process"])
@pytest.mark.parametrize("how", ["link", "file"])
async def test_a_file_swapped_after_its_fingerprint_fails_and_what_replaced_it_is_a_drop_of_its_own(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reader: str, how: str) -> None:
    """The parse opens the file anew (in a child process for a big file): it reads it only if
    it is the very file fingerprinted; else the batch fails saying so, nothing of either file
    is dialed, and what is there now is dropped like any file (a link: refused)."""
    if reader == "process":
        monkeypatch.setattr(files, "PROCESS_THRESHOLD_BYTES", 0)
    other = tmp_path / "other.csv"
    other.write_text(OTHER)
    path = drop(inbox, "leads.csv", LEADS)
    real = files.survey

    def swapped_after(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if other.exists() and not path.is_symlink():
            swap(path, how, other)
        return out

    monkeypatch.setattr(files, "survey", swapped_after)
    assert await settle_and_scan(inbox, clock) == 1
    why = ("the file was replaced while it was read: "
           + ("a symbolic link was put in its place (links are not followed)" if how == "link"
              else "another file was put in its place"))
    assert (inbox.root / "failed" / "leads.csv.error.txt").read_text() == (
        f"leads.csv: {why}\ntarget: sales\n"
        "Nothing from this file was ingested. Fix it and drop it into the inbox again.\n")
    async with pool.acquire() as conn:
        assert [tuple(r) for r in await conn.fetch("SELECT state, error FROM batches")] == [("failed", why)]
    assert await numbers(pool) == set()
    assert os.path.lexists(path)  # what is there now was not the file read: it stays, a drop
    assert await settle_and_scan(inbox, clock) == 1
    if how == "link":
        assert os.readlink(inbox.root / "failed" / "leads-2.csv") == str(tmp_path / "other.csv")
        assert await numbers(pool) == set()
    else:
        assert report(inbox, "leads.csv")["counts"]["accepted"] == 1
        assert await numbers(pool) == {"+14155550199"}
    assert not os.path.lexists(path)


async def test_a_file_written_to_while_it_is_parsed_fails_and_is_taken_again_as_it_is_now(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [f"+1415555{i:04d}" for i in range(1500)]  # chunks of 1000 rows, then 500
    path = drop(inbox, "big.csv", "number\n" + "\n".join(rows) + "\n")
    real = files.chunks_from_thread

    async def appended_to(*args: Any, **kwargs: Any) -> Any:
        n = 0
        async for chunk in real(*args, **kwargs):
            n += 1
            if n == 1:
                with path.open("a") as f:  # `cat more.csv >> big.csv` (the same inode)
                    f.write("+14155559999\n")
            yield chunk

    monkeypatch.setattr(files, "chunks_from_thread", appended_to)
    assert await settle_and_scan(inbox, clock) == 1
    why = ("the file was replaced while it was read: its content changed (written to since it "
           "was first read)")
    assert (inbox.root / "failed" / "big.csv.error.txt").read_text().startswith(f"big.csv: {why}\n")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT error FROM batches") == why
        assert await conn.fetchval("SELECT count(*) FROM calls") == 0  # the rows read are dropped
    monkeypatch.setattr(files, "chunks_from_thread", real)
    assert await settle_and_scan(inbox, clock) == 1  # as it is now, a drop of its own
    assert report(inbox, "big.csv")["counts"]["accepted"] == 1501


async def test_the_cut_off_check_hashes_no_file_through_a_link_put_in_its_place(
        inbox: Inbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = drop(inbox, "a.csv", LEADS)
    elsewhere = tmp_path / "secret.csv"
    elsewhere.write_text(OTHER)
    real = Inbox.candidates

    def swapped(self: Inbox) -> Any:
        out = real(self)
        swap(path, "link", elsewhere)
        return out

    monkeypatch.setattr(Inbox, "candidates", swapped)
    assert inbox.cut_off._waiting({None}) == set()


async def test_a_link_named_on_the_command_line_is_followed_one_uploaded_is_not(
        settings: Settings, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path) -> None:
    real = tmp_path / "exports" / "leads.csv"
    real.parent.mkdir()
    real.write_text(LEADS)
    ln = tmp_path / "leads.csv"
    ln.symlink_to(real)
    ingestor = FileIngestor(pool, settings, clock)
    uploaded = await ingestor.ingest(ln, "sales", source="api")
    assert (uploaded.kind, uploaded.error) == ("failed", "cannot open file: it is a symbolic link (links "
                                               "are not followed)")
    await nothing_ingested(pool)
    typed = await ingestor.ingest(ln, "sales", source="cli", follow_links=True)  # `dialer ingest leads.csv`
    assert typed.kind == "ingested" and typed.counts["accepted"] == 2


@pytest.mark.parametrize("reader", ["thread", "process"])
@pytest.mark.parametrize("how", ["mv", "rm"])
async def test_a_file_renamed_over_or_removed_while_it_is_parsed_fails_and_none_of_it_is_dialed(
        make_settings: Any, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, reader: str, how: str) -> None:
    """The reader's open file reads on unchanged (its inode is only unlinked), yet it is no
    longer the file dropped there: its batch fails, and what is in its place is a drop of its
    own (`mv other.csv inbox/w4.csv`, `rm inbox/w4.csv` while it is read)."""
    settings = make_settings(settle_s=0.2, inbox_poll_s=0.05, ingest_commit_rows=100)
    inbox = Inbox(settings, FileIngestor(pool, settings, clock), clock)
    inbox.ensure_dirs()
    if reader == "process":
        monkeypatch.setattr(files, "PROCESS_THRESHOLD_BYTES", 0)
    rows = [f"+1415555{i:04d}" for i in range(3000)]  # 30 chunks: the reader is far from its end
    path = drop(inbox, "w4.csv", "number\n" + "\n".join(rows) + "\n")
    newer = tmp_path / "newer.csv"
    newer.write_text(OTHER)
    name = "chunks_from_process" if reader == "process" else "chunks_from_thread"
    real = getattr(files, name)

    async def swapped_after_the_first_chunk(*args: Any, **kwargs: Any) -> Any:
        n = 0
        async for chunk in real(*args, **kwargs):
            n += 1
            if n == 1:  # the process reader is at most a few chunks ahead (a bounded queue)
                if how == "mv":
                    os.replace(newer, path)
                else:
                    path.unlink()
            yield chunk

    monkeypatch.setattr(files, name, swapped_after_the_first_chunk)
    assert await settle_and_scan(inbox, clock) == 1
    why = "the file was replaced while it was read: " + (
        "another file was put in its place" if how == "mv" else "it was removed")
    assert (inbox.root / "failed" / "w4.csv.error.txt").read_text() == (
        f"w4.csv: {why}\ntarget: sales\n"
        "Nothing from this file was ingested. Fix it and drop it into the inbox again.\n")
    async with pool.acquire() as conn:
        assert [tuple(r) for r in await conn.fetch("SELECT state, error FROM batches")] == [("failed", why)]
    assert await numbers(pool) == set()  # the rows read are dropped
    assert sorted(p.name for p in (inbox.root / "failed").iterdir()) == ["w4.csv.error.txt"]
    monkeypatch.setattr(files, name, real)
    if how == "rm":
        assert not os.path.lexists(path)
        assert await settle_and_scan(inbox, clock) == 0
        return
    assert path.read_text() == OTHER  # what is there now was not read: it stays, a drop
    assert await settle_and_scan(inbox, clock) == 1
    assert report(inbox, "w4.csv")["counts"]["accepted"] == 1
    assert await numbers(pool) == {"+14155550199"}
    async with pool.acquire() as conn:
        assert sorted(r["state"] for r in await conn.fetch("SELECT state FROM batches")) == ["failed", "ingested"]


@pytest.mark.parametrize("when", ["parse", "after"])
async def test_a_target_folder_swapped_for_a_link_while_its_file_is_read_moves_nothing_outside(
        make_settings: Any, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """`mv inbox/sales away; ln -s /elsewhere inbox/sales`, /elsewhere holding a hard link of
    the very file read: the file is looked up, and moved, without following the folder's link,
    so what is outside the inbox stays where it is. Swapped during the parse, the batch fails;
    once read (before it is filed), the batch stands and its report is filed alone."""
    settings = make_settings(settle_s=0.2, inbox_poll_s=0.05, ingest_commit_rows=100)
    inbox = Inbox(settings, FileIngestor(pool, settings, clock), clock)
    inbox.ensure_dirs()
    rows = [f"+1415555{i:04d}" for i in range(3000)]
    path = drop(inbox, "w4.csv", "number\n" + "\n".join(rows) + "\n", "sales")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(path, elsewhere / "w4.csv")  # the same inode: the same (dev, ino, size, mtime)

    def swap_folder() -> None:
        path.parent.rename(tmp_path / "away")
        path.parent.symlink_to(elsewhere)

    if when == "parse":
        real = files.chunks_from_thread

        async def swapped_after_the_first_chunk(*args: Any, **kwargs: Any) -> Any:
            n = 0
            async for chunk in real(*args, **kwargs):
                n += 1
                if n == 1:
                    swap_folder()
                yield chunk

        monkeypatch.setattr(files, "chunks_from_thread", swapped_after_the_first_chunk)
    else:
        ingest = FileIngestor.ingest

        async def swapped_once_read(self: FileIngestor, *args: Any, **kwargs: Any) -> Any:
            out = await ingest(self, *args, **kwargs)
            swap_folder()
            return out

        monkeypatch.setattr(FileIngestor, "ingest", swapped_once_read)
    assert await settle_and_scan(inbox, clock) == 1
    assert (elsewhere / "w4.csv").stat().st_nlink == 2  # not moved: it is outside the inbox
    assert (tmp_path / "away" / "w4.csv").exists()
    day = clock.now().astimezone().date().isoformat()
    async with pool.acquire() as conn:
        state = await conn.fetchval("SELECT state FROM batches")
    if when == "parse":
        why = ("the file was replaced while it was read: a symbolic link was put in its place "
               "(links are not followed)")
        assert (inbox.root / "failed" / "w4.csv.error.txt").read_text().startswith(f"w4.csv: {why}\n")
        assert state == "failed" and await numbers(pool) == set()
        assert sorted(p.name for p in (inbox.root / "failed").iterdir()) == ["w4.csv.error.txt"]
    else:
        assert state == "ingested"
        assert sorted(p.name for p in (inbox.root / "processed" / day).iterdir()) == ["w4.csv.report.json"]
        assert list((inbox.root / "failed").iterdir()) == []
