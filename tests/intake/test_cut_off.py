"""Ingests cut off part-way (a crash, the database away), driven against a real PostgreSQL
and a real inbox directory: with their file still there they resume exactly; with it gone
(removed, replaced by other content, moved to another target, an upload whose request
died) they never can, and their batch ends failed and reported instead of receiving for
good, its rows read never dialed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake.cut_off import CHECK_S
from dialer.intake.files import FileIngestor, FileOutcome
from dialer.intake.inbox import Inbox, unique_path
from dialer.store.database import create_pool
from dialer.store.queries import Q
from tests.conftest import await_for
from tests.intake.test_inbox import settle_and_scan
from tests.intake.test_streams import HEADER, csv_rows

ROWS = 1_000
INVALID = len(range(0, ROWS, 97))  # csv_rows: every 97th number is invalid
TWO_TARGETS = {"sales": {"queue_id": "1"}, "renewals": {"queue_id": "2"}}


@pytest.fixture
def cut_settings(make_settings: Callable[..., Settings]) -> Settings:
    # 100-row chunks: a cut-off ingest has read a tenth of its file
    return make_settings(settle_s=0.2, inbox_poll_s=0.05, ingest_commit_rows=100, targets=TWO_TARGETS)


def new_inbox(settings: Settings, pool: asyncpg.Pool, clock: FakeClock) -> Inbox:
    """The inbox of a daemon (re)started now."""
    box = Inbox(settings, FileIngestor(pool, settings, clock), clock)
    box.ensure_dirs()
    return box


def drop_leads(settings: Settings, name: str, body: str, target: str | None = None) -> Path:
    d = settings.inbox / target if target else settings.inbox
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(body)
    return d / name


async def cut_off(settings: Settings, pool: asyncpg.Pool, db_url: str, clock: FakeClock, path: Path, *,
                  target: str = "sales", source: str = "inbox", name: str | None = None) -> Any:
    """Ingest ``path`` as the daemon does, and die at its first committed chunk, as a kill -9
    would: the chunks in flight are cut off and every session ends. Returns its batch."""
    crashed = await create_pool(db_url, min_size=1, max_size=6)
    with anyio.CancelScope() as scope:
        await FileIngestor(crashed, settings, clock).ingest(path, target, source=source, name=name,
                                                           on_progress=lambda _: scope.cancel())
    crashed.terminate()
    assert scope.cancelled_caught

    async def sessions_gone() -> bool:  # and with them the file's lock
        async with pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                             "WHERE l.locktype = 'advisory' AND d.datname = current_database())"))

    await await_for(sessions_gone, 30, "the cut-off sessions to end")
    async with pool.acquire() as conn:
        batch = await conn.fetchrow("SELECT b.* FROM batches b JOIN inbox_files f ON f.batch_id = b.id "
                                    "WHERE f.path = $1", os.fsencode(path))
    assert batch["state"] == "receiving" and 0 < batch["rows_read"] < ROWS
    return batch


async def batch_of(pool: asyncpg.Pool, batch_id: Any) -> Any:
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT state, error, rows_read, "
                                   "(SELECT count(*) FROM calls c WHERE c.batch_id = b.id) AS calls "
                                   "FROM batches b WHERE id = $1", batch_id)


async def waiting_holds(pool: asyncpg.Pool, clock: FakeClock, target: str) -> dict[str, int]:
    """What holds the target's waiting leads (GET /v1/targets/{name}/waiting)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(Q.waiting_counts, target, clock.now(), clock.now(), None)
    return {r["why"]: r["n"] for r in rows}


def processed(settings: Settings, clock: FakeClock, name: str) -> dict[str, Any]:
    day = clock.now().astimezone().date().isoformat()
    return dict(json.loads((settings.inbox / "processed" / day / f"{name}.report.json").read_text()))


async def numbers(pool: asyncpg.Pool) -> set[str]:
    async with pool.acquire() as conn:
        return {r["e164"] for r in await conn.fetch("SELECT e164 FROM calls WHERE state = 'pending'")}


# rewritten: the same bytes, a new mtime; renamed: in the inbox, as sales ops may do
@pytest.mark.parametrize("how", ["kept", "rewritten", "renamed"])
async def test_a_cut_off_file_still_there_resumes_exactly(cut_settings: Settings, pool: asyncpg.Pool,
                                                          clock: FakeClock, db_url: str, how: str) -> None:
    path = drop_leads(cut_settings, "big.csv", HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path)
    if how == "rewritten":
        path.write_bytes(path.read_bytes())
    elif how == "renamed":
        path = path.rename(path.with_name("big-fixed.csv"))
    box = new_inbox(cut_settings, pool, clock)
    assert await settle_and_scan(box, clock) == 1
    rep = processed(cut_settings, clock, path.name)
    assert rep["batch_id"] == str(batch["id"])  # the same batch, resumed
    assert rep["counts"] == {"rows": ROWS, "accepted": ROWS - INVALID, "invalid": INVALID, "duplicate": 0, "dnc": 0}
    assert (await batch_of(pool, batch["id"]))["state"] == "ingested"
    async with pool.acquire() as conn:  # as GET /v1/batches/{id} shows it: its name now
        assert (await conn.fetchrow(Q.batch_get, batch["id"]))["source_name"] == path.name
    assert not list((cut_settings.inbox / "failed").iterdir())


async def test_a_file_removed_after_its_ingest_was_cut_off_ends_failed_with_a_note(
        cut_settings: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    """Removed while the daemon was down: the first scan after the restart ends its batch."""
    path = drop_leads(cut_settings, "gone.csv", HEADER + csv_rows(ROWS), target="renewals")
    batch = await cut_off(cut_settings, pool, db_url, clock, path, target="renewals")
    path.unlink()
    assert "receiving" in await waiting_holds(pool, clock, "renewals")  # "its batch is still coming in"
    box = new_inbox(cut_settings, pool, clock)
    assert await box.scan_once() == 0
    assert await waiting_holds(pool, clock, "renewals") == {}
    b = await batch_of(pool, batch["id"])
    read = batch["rows_read"]
    assert b["state"] == "failed" and b["calls"] == 0 and b["rows_read"] == read  # never dialed, still counted
    assert b["error"] == (f"the file renewals/gone.csv was removed from the inbox before its ingest finished: "
                          f"the {read} rows of it read so far are not dialed; drop the file again to dial its leads")
    note = (cut_settings.inbox / "failed" / "gone.csv.error.txt").read_text()
    assert note == f"gone.csv: {b['error']}\ntarget: renewals\nbatch: {batch['id']} (failed)\n"
    assert sorted(p.name for p in (cut_settings.inbox / "failed").iterdir()) == ["gone.csv.error.txt"]
    async with pool.acquire() as conn:
        f = await conn.fetchrow("SELECT state, filed_path FROM inbox_files")
        assert await conn.fetchval("SELECT count(*) FROM batches WHERE state = 'receiving'") == 0
    assert dict(f) == {"state": "failed",
                       "filed_path": os.fsencode(cut_settings.inbox / "failed" / "gone.csv.error.txt")}
    # dropped again, it is ingested whole, as a batch of its own
    drop_leads(cut_settings, "gone.csv", HEADER + csv_rows(ROWS), target="renewals")
    assert await settle_and_scan(box, clock) == 1
    rep = processed(cut_settings, clock, "gone.csv")
    assert rep["batch_id"] != str(batch["id"]) and rep["counts"]["rows"] == ROWS
    assert sorted(p.name for p in (cut_settings.inbox / "failed").iterdir()) == ["gone.csv.error.txt"]


async def test_a_file_replaced_after_its_ingest_was_cut_off_is_a_drop_of_its_own(
        cut_settings: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    path = drop_leads(cut_settings, "leads.csv", HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path)
    path.write_text("number\n+14155550100\n+14155550101\n")  # saved over it, other leads
    box = new_inbox(cut_settings, pool, clock)
    assert await settle_and_scan(box, clock) == 1
    rep = processed(cut_settings, clock, "leads.csv")
    assert rep["batch_id"] != str(batch["id"]) and rep["counts"]["accepted"] == 2
    b = await batch_of(pool, batch["id"])
    assert b["state"] == "failed" and b["calls"] == 0
    assert b["error"] == (f"the file leads.csv was replaced by a different file (sha256 {rep['sha256']}) before "
                          f"its ingest finished: the {batch['rows_read']} rows of the first file read so far "
                          "are not dialed; the file now in its place is taken as a drop of its own")
    assert (cut_settings.inbox / "failed" / "leads.csv.error.txt").read_text().startswith(f"leads.csv: {b['error']}\n")
    assert await numbers(pool) == {"+14155550100", "+14155550101"}  # none of the first file's


async def test_a_file_removed_while_the_daemon_runs_is_found_within_a_check_period(
        cut_settings: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    """Its ingest cut off by the database going away, then the file removed while the
    inbox waited to retry it: no scan will take it again."""
    box = new_inbox(cut_settings, pool, clock)
    assert await box.scan_once() == 0  # the start-up check: nothing cut off yet
    path = drop_leads(cut_settings, "x.csv", HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path)
    path.unlink()
    assert await box.scan_once() == 0
    assert (await batch_of(pool, batch["id"]))["state"] == "receiving"  # not due yet
    clock.advance(CHECK_S)
    await box.scan_once()
    assert (await batch_of(pool, batch["id"]))["state"] == "failed"
    assert (cut_settings.inbox / "failed" / "x.csv.error.txt").exists()


async def test_a_file_being_read_is_never_taken_for_one_cut_off(
        cut_settings: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    """Another instance holds the file's lock (it is reading it, from its own copy of a
    shared inbox, say): not cut off, whatever this instance sees."""
    path = drop_leads(cut_settings, "x.csv", HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path)
    path.unlink()
    box = new_inbox(cut_settings, pool, clock)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(3, hashtext($1))", batch["sha256"])
        assert await box.cut_off.abandon_gone() == 0
        assert (await batch_of(pool, batch["id"]))["state"] == "receiving"
        await holder.execute("SELECT pg_advisory_unlock(3, hashtext($1))", batch["sha256"])
    assert await box.cut_off.abandon_gone() == 1
    assert (await batch_of(pool, batch["id"]))["state"] == "failed"


async def test_an_unmounted_inbox_abandons_nothing(cut_settings: Settings, pool: asyncpg.Pool,
                                                    clock: FakeClock, db_url: str, tmp_path: Path) -> None:
    path = drop_leads(cut_settings, "x.csv", HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path)
    box = new_inbox(cut_settings, pool, clock)
    cut_settings.inbox.rename(tmp_path / "away")  # every file of it looks gone
    assert await box.cut_off.abandon_gone() == 0
    assert (await batch_of(pool, batch["id"]))["state"] == "receiving"


async def test_a_file_moved_to_another_target_while_cut_off_is_ingested_there_whole(
        cut_settings: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    path = drop_leads(cut_settings, "m.csv", HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path)
    (cut_settings.inbox / "renewals").mkdir(exist_ok=True)
    path.rename(cut_settings.inbox / "renewals" / "m.csv")
    box = new_inbox(cut_settings, pool, clock)
    assert await settle_and_scan(box, clock) == 1
    rep = processed(cut_settings, clock, "m.csv")
    assert rep["target"] == "renewals" and rep["counts"]["rows"] == ROWS
    b = await batch_of(pool, batch["id"])
    assert b["state"] == "failed" and b["calls"] == 0
    assert b["error"] == (f"the file was taken again for target 'renewals' (batch {rep['batch_id']}) before its "
                          f"ingest for 'sales' finished: the {batch['rows_read']} rows read for this batch are not "
                          f"dialed; the file's leads are in batch {rep['batch_id']}")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE target = 'renewals'") == ROWS
        assert await conn.fetchval("SELECT count(*) FROM batches WHERE state = 'receiving'") == 0


async def test_an_upload_cut_off_is_abandoned_once_its_request_is_over(
        cut_settings: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str) -> None:
    """Nothing but the upload's request reads its copy: after a kill -9 (the copy left
    behind) or the database going away (the copy discarded), nothing would resume it."""
    incoming = cut_settings.state_dir / "uploads" / ".incoming"
    incoming.mkdir(parents=True)
    part = incoming / "0123abcd.part"
    part.write_text(HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, part, source="api", name="crm.csv")
    box = new_inbox(cut_settings, pool, clock)
    assert await box.cut_off.abandon_gone() == 1
    b = await batch_of(pool, batch["id"])
    assert b["state"] == "failed" and b["calls"] == 0
    assert b["error"] == (f"the upload of crm.csv was cut off before its ingest finished: the {batch['rows_read']} "
                          "rows of it read so far are not dialed; upload the file again to dial its leads")
    assert not part.exists() and not list((cut_settings.inbox / "failed").iterdir())


async def test_a_cut_off_cli_ingest_is_left_to_its_rerun(cut_settings: Settings, pool: asyncpg.Pool,
                                                         clock: FakeClock, db_url: str, tmp_path: Path) -> None:
    """`dialer ingest` may run on another host, from another folder: the daemon cannot
    tell its file is gone. Run again, it resumes."""
    path = tmp_path / "cli.csv"
    path.write_text(HEADER + csv_rows(ROWS))
    batch = await cut_off(cut_settings, pool, db_url, clock, path, source="cli")
    box = new_inbox(cut_settings, pool, clock)
    assert await box.cut_off.abandon_gone() == 0
    out: FileOutcome = await FileIngestor(pool, cut_settings, clock).ingest(path, "sales", source="cli")
    assert out.kind == "ingested" and out.batch_id == batch["id"] and out.counts["rows"] == ROWS


def test_a_note_standing_alone_keeps_its_name(tmp_path: Path) -> None:
    """The note of a file gone before its ingest finished has no file beside it: a later
    failed file of that name does not write over it."""
    (tmp_path / "x.csv.error.txt").write_text("first")
    assert unique_path(tmp_path, "x.csv") == tmp_path / "x-2.csv"
