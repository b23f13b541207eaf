"""A batch's finalise, and the drop of a failed batch's rows, run under limits scaled by its
rows: a file is never refused for its size, a lock wait still ends, and a finalise that
fails leaves its batch to a retry that counts every row once.

The un-scaled limit (``limits.BULK_BASE_S``, 60 s) is lowered to 1 ms, in which no statement
over a batch of a few thousand rows runs: what a file of millions of rows meets at 60 s.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake import dnc
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.store import limits
from dialer.store.database import create_pool
from tests.intake.test_inbox import drop, report, settle_and_scan

NO_TIME = 0.001  # as the base: no statement over thousands of rows runs in 1 ms


def leads(numbers: range, tag: str) -> str:
    return "".join(f"+1415{2000000 + i:07d},{tag}{i}\n" for i in numbers)


def number(i: int) -> str:
    return f"+1415{2000000 + i:07d}"


async def batch_of(pool: asyncpg.Pool, name: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row: asyncpg.Record = await conn.fetchrow(
            "SELECT id, state, rows_read, error, (SELECT count(*) FROM calls c WHERE c.batch_id = b.id) AS calls "
            "FROM batches b WHERE source_name = $1", name)
    return row


async def test_a_big_batchs_finalise_gets_time_for_its_rows_and_one_that_failed_is_retried_exactly(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    drop(inbox, "first.csv", "number,external_id\n" + leads(range(4000), "a"))
    assert await settle_and_scan(inbox, clock) == 1
    await dnc.add_numbers(pool, [number(4001)], source="api", now=clock.now(), targets=inbox.settings.targets)
    # the first file's 4,000 numbers again (each has a live call), 1,000 new ones (one of them
    # listed), a new number twice more, three invalid rows
    again = drop(inbox, "again.csv", "number,external_id\n" + leads(range(5000), "b")
                 + f"{number(4002)},x\n{number(4002)},y\n12,z\n12,z\n12,z\n")

    monkeypatch.setattr(limits, "BULK_BASE_S", NO_TIME)
    per_row = limits.BULK_ROW_S
    monkeypatch.setattr(limits, "BULK_ROW_S", 0.0)  # un-scaled: the old flat limit
    with caplog.at_level(logging.WARNING, logger="dialer.intake.inbox"):
        assert await settle_and_scan(inbox, clock) == 0
    # the inbox stays up and says precisely why; the rows are kept, the batch not finalised
    retried = [r for r in caplog.records if r.getMessage() == "inbox file will be retried"]
    assert len(retried) == 1 and retried[0].exc_info is not None
    err = retried[0].exc_info[1]
    assert isinstance(err, asyncpg.QueryCanceledError) and "canceling statement due to statement timeout" in str(err)
    assert again.exists()
    batch = await batch_of(pool, "again.csv")
    assert (batch["state"], batch["rows_read"], batch["calls"]) == ("receiving", 5005, 5005)

    monkeypatch.setattr(limits, "BULK_ROW_S", per_row)  # scaled: 1 ms plus this much a row
    clock.advance(60)  # past the retry's back-off
    assert await inbox.scan_once() == 1
    rep = report(inbox, "again.csv")
    assert rep["counts"] == {"rows": 5005, "accepted": 999, "invalid": 3, "duplicate": 4002, "dnc": 1}
    assert len(rep["rejected"]) == 3 + 4002 + 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE batch_id = $1 AND state = 'pending'",
                                   batch["id"]) == 999
        assert await conn.fetchval("SELECT state FROM batches WHERE id = $1", batch["id"]) == "ingested"


async def test_the_finalises_statements_are_not_held_to_the_pools_command_timeout(
        settings: Settings, db_url: str, clock: FakeClock, tmp_path: Path) -> None:
    """asyncpg ends a call at the pool's command timeout on the client side, whatever the
    server allows: each of the finalise's calls passes its batch's own. Here the pool allows
    1 s and marking the one duplicate takes 2 s (a trigger sleeps; in production: 60 s, and
    the marking of a few hundred thousand duplicates into a big table)."""
    pool = await create_pool(db_url, min_size=1, max_size=2, command_timeout=1.0)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE FUNCTION slow_mark() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;"
                "CREATE TRIGGER slow_mark BEFORE UPDATE ON calls FOR EACH ROW "
                "WHEN (OLD.state = 'pending' AND NEW.state = 'duplicate') EXECUTE FUNCTION slow_mark()")
        ingestor = FileIngestor(pool, settings, clock)
        first, again = tmp_path / "first.csv", tmp_path / "again.csv"
        first.write_text(f"number\n{number(1)}\n{number(2)}\n")
        again.write_text(f"number\n{number(2)}\n{number(3)}\n")
        assert (await ingestor.ingest(first, "sales", source="cli")).kind == "ingested"
        with anyio.fail_after(30):  # a hang guard, not a measurement
            outcome = await ingestor.ingest(again, "sales", source="cli")
        assert outcome.kind == "ingested"
        assert outcome.counts == {"rows": 2, "accepted": 1, "invalid": 0, "duplicate": 1, "dnc": 0}
    finally:
        await pool.close()


async def test_a_lock_wait_still_ends_whatever_the_batchs_size(
        settings: Settings, pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another session holds the target's dedupe lock and never lets go: the finalise's wait
    ends after half the base limit (30 s; here 0.2 s), not the batch's, with an error that says so."""
    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)
    path = tmp_path / "leads.csv"
    path.write_text("number\n" + "".join(f"{number(i)}\n" for i in range(3000)))
    ingestor = FileIngestor(pool, settings, clock)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            with anyio.fail_after(30), pytest.raises(asyncpg.LockNotAvailableError,
                                                     match="canceling statement due to lock timeout"):
                await ingestor.ingest(path, "sales", source="cli")
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
    batch = await batch_of(pool, "leads.csv")
    assert (batch["state"], batch["rows_read"]) == ("receiving", 3000)
    outcome = await ingestor.ingest(path, "sales", source="cli")
    assert outcome.kind == "ingested" and outcome.batch_id == batch["id"]
    assert outcome.counts == {"rows": 3000, "accepted": 3000, "invalid": 0, "duplicate": 0, "dnc": 0}


# `dialer` as `python -m dialer` runs it, ``limits``' constants first set as argv[1] (JSON) says
WITH_LIMITS = ("import json, sys; from dialer.store import limits; "
               "[setattr(limits, k, v) for k, v in json.loads(sys.argv.pop(1)).items()]; "
               "from dialer.cli import main; raise SystemExit(main())")


def dialer(args: list[str], db_url: str, cwd: Path, **lowered: float) -> subprocess.CompletedProcess[str]:
    """The ``dialer`` command in a child process; ``lowered``: ``limits.BULK_*`` values for it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(DIALER_DATABASE_URL=db_url, DIALER_STATE_DIR=str(cwd / "var"), DIALER_LOG_FORMAT="json")
    head = [sys.executable, "-c", WITH_LIMITS, json.dumps(lowered)] if lowered else [sys.executable, "-m", "dialer"]
    return subprocess.run([*head, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def cli_ingest(path: Path, db_url: str, **lowered: float) -> subprocess.CompletedProcess[str]:
    return dialer(["ingest", str(path)], db_url, path.parent, **lowered)


async def rerun_finishes(pool: asyncpg.Pool, db_url: str, path: Path, batch: asyncpg.Record) -> None:
    """The same `dialer ingest` run again resumes ``batch`` (3,002 rows read, left receiving)
    and settles it, every row counted once."""
    r = await anyio.to_thread.run_sync(lambda: cli_ingest(path, db_url))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert (rep["result"], rep["batch_id"]) == ("ingested", str(batch["id"]))
    assert rep["counts"] == {"rows": 3002, "accepted": 3000, "invalid": 1, "duplicate": 1, "dnc": 0}
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE batch_id = $1 AND state = 'pending'",
                                   batch["id"]) == 3000
        assert await conn.fetchval("SELECT count(*) FROM batches") == 1
    batch = await batch_of(pool, "leads.csv")
    assert (batch["state"], batch["rows_read"], batch["calls"]) == ("ingested", 3002, 3002)


async def test_dialer_ingest_on_a_target_busy_finishing_another_batch_says_so_and_a_rerun_finishes_it(
        pool: asyncpg.Pool, db_url: str, tmp_path: Path) -> None:
    """Another session holds the target's dedupe lock (a big batch's finalise) past the wait the
    finalise allows (30 s; here 0.2 s): the command exits 1 saying so, the rows it read are kept,
    and the same command run again resumes there and settles the batch, every row counted once."""
    path = tmp_path / "leads.csv"
    path.write_text("number,external_id\n" + leads(range(3000), "a") + f"{number(5)},again\n12,z\n")
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            r = await anyio.to_thread.run_sync(lambda: cli_ingest(path, db_url, BULK_BASE_S=0.4))
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("error: target 'sales' is busy finishing another batch; run the same command again: it resumes "
            "where it stopped") in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    batch = await batch_of(pool, "leads.csv")
    assert (batch["state"], batch["rows_read"], batch["calls"]) == ("receiving", 3002, 3002)

    await rerun_finishes(pool, db_url, path, batch)


async def test_a_file_found_unreadable_after_many_rows_has_them_dropped_in_the_batchs_time(
        make_settings: Callable[..., Settings], pool: asyncpg.Pool, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON cut off after 4,000 leads, committed in chunks: the failed batch's rows are deleted
    under its scaled limit, and the file fails with its reason instead of being retried forever."""
    settings = make_settings(ingest_commit_rows=500)
    path = tmp_path / "cut.json"
    path.write_text(json.dumps([{"number": number(i)} for i in range(4000)])[:-1] + ', {"number": "+1415')
    ingestor = FileIngestor(pool, settings, clock)
    monkeypatch.setattr(limits, "BULK_BASE_S", NO_TIME)
    per_row = limits.BULK_ROW_S
    monkeypatch.setattr(limits, "BULK_ROW_S", 0.0)
    with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
        await ingestor.ingest(path, "sales", source="cli")
    batch = await batch_of(pool, "cut.json")
    assert (batch["state"], batch["calls"]) == ("receiving", 4000)

    monkeypatch.setattr(limits, "BULK_ROW_S", per_row)
    outcome = await ingestor.ingest(path, "sales", source="cli")
    assert outcome.kind == "failed" and outcome.error and "JSON" in outcome.error
    batch = await batch_of(pool, "cut.json")
    assert (batch["state"], batch["error"], batch["calls"]) == ("failed", outcome.error, 0)


async def test_dialer_ingest_whose_finalise_runs_past_its_time_limit_says_so_and_a_rerun_finishes_it(
        pool: asyncpg.Pool, db_url: str, tmp_path: Path) -> None:
    """Not a traceback: the command exits 1 saying what happened; the rows read are kept, and the
    same command run again resumes there and settles the batch, every row counted once."""
    path = tmp_path / "leads.csv"
    path.write_text("number,external_id\n" + leads(range(3000), "a") + f"{number(5)},again\n12,z\n")
    r = await anyio.to_thread.run_sync(lambda: cli_ingest(path, db_url, BULK_BASE_S=NO_TIME, BULK_ROW_S=0.0))
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("error: leads.csv: settling its batch was stopped: one of its steps ran past its time limit (the "
            "database may be overloaded); the rows read are kept, none is dialed: run the same command again: "
            "it resumes where it stopped") in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    batch = await batch_of(pool, "leads.csv")
    assert (batch["state"], batch["rows_read"], batch["calls"]) == ("receiving", 3002, 3002)

    await rerun_finishes(pool, db_url, path, batch)
