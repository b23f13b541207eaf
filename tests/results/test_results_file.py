"""An inbox batch's results file is owed until it is written (SPEC §4): a write that fails
(a directory in the way) leaves the batch ``done`` and the file owed, retried by the
completion sweep with backoff; a crash between the batch's done commit and the write is
picked up by the next instance's sweep. HTTP-posted batches owe no file."""

from __future__ import annotations

import csv
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from dialer import metrics
from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.intake.inbox import Inbox
from dialer.results import files
from dialer.results.files import COLUMNS, Completion, write_owed_results
from tests.conftest import TOKEN
from tests.intake.test_inbox import drop, settle_and_scan

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AppContext(settings=settings, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def ingest_rejected_file(inbox: Inbox, clock: FakeClock) -> Path:
    """An inbox file whose every row is rejected (done at the first check); returns where
    its results file goes."""
    drop(inbox, "rtest.csv", "number\nnope\n12\n")
    await settle_and_scan(inbox, clock)
    day = clock.now().astimezone().date().isoformat()
    return inbox.root / "processed" / day / "rtest.csv.results.csv"


def assert_results(path: Path) -> None:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS
    cells = [dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]]
    assert [(c["number"], c["state"], c["attempts"]) for c in cells] == [("nope", "invalid", "0"),
                                                                         ("12", "invalid", "0")]


async def owed(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT id, state, results_path, results_attempts FROM batches "
                                     "WHERE results_due_at IS NOT NULL"))


async def results_backlog(pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> float:
    m = metrics.Metrics(settings.targets)  # a fresh one: no refresh throttle
    await m.refresh(AppContext(settings=settings, pool=pool, clock=clock))
    return m.registry.get_sample_value("dialer_results_file_backlog") or 0.0


async def test_a_results_file_that_failed_to_write_is_written_once_the_obstacle_is_gone(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, settings: Settings, api: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture) -> None:
    results = await ingest_rejected_file(inbox, clock)
    results.mkdir()  # in the way of the rename
    completion = Completion(pool, clock)
    with caplog.at_level(logging.WARNING, logger="dialer.results.files"):
        [bid] = await completion.check()
    assert results.is_dir() and not results.with_name(results.name + ".tmp").exists()  # no stray .tmp
    (warned,) = [r for r in caplog.records if "could not write results file" in r.getMessage()]
    assert warned.path == str(results) and "directory" in warned.error.lower()  # type: ignore[attr-defined]
    [row] = await owed(pool)
    assert (row["id"], row["state"], row["results_path"], row["results_attempts"]) == (bid, "done", None, 1)
    b = (await api.get(f"/v1/batches/{bid}", headers=AUTH)).json()
    assert b["state"] == "done"  # owing its file changes nothing the API shows
    assert await results_backlog(pool, settings, clock) == 1

    results.rmdir()
    clock.advance(completion.sweep_s / 2)
    completion.sweep_soon()
    await completion.check()
    assert not results.exists()  # swept, but its first retry is not due yet (backoff)
    clock.advance(files.results_backoff(1).total_seconds())  # past the backoff and the next sweep
    await completion.check()
    assert_results(results)
    assert await owed(pool) == []
    assert await results_backlog(pool, settings, clock) == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT results_path FROM batches WHERE id = $1", bid) == str(results)


async def die_before_the_write(pool: asyncpg.Pool, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> uuid.UUID:
    """A daemon killed between the commit that makes the batch done and its file's write."""
    async def killed(*_: object) -> int:
        raise SystemExit("killed")

    with monkeypatch.context() as m:
        m.setattr(files, "write_results_csv", killed)
        with pytest.raises(SystemExit):
            await Completion(pool, clock).check()
    [row] = await owed(pool)
    assert row["state"] == "done"
    return uuid.UUID(str(row["id"]))


async def test_a_results_file_owed_when_the_daemon_died_is_written_by_the_next_one(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    results = await ingest_rejected_file(inbox, clock)
    await die_before_the_write(pool, clock, monkeypatch)
    assert not results.exists()
    await Completion(pool, clock).check()  # the restarted daemon's first sweep
    assert_results(results)
    assert await owed(pool) == []


async def test_one_instance_at_a_time_writes_an_owed_results_file(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    results = await ingest_rejected_file(inbox, clock)
    bid = await die_before_the_write(pool, clock, monkeypatch)
    async with pool.acquire() as other, pool.acquire() as conn:
        async with other.transaction():  # another instance is writing it
            await other.execute("SELECT pg_advisory_xact_lock(8, hashtext($1::uuid::text))", bid)
            assert await write_owed_results(conn, bid, clock.now()) is None
            assert not results.exists()
        assert await write_owed_results(conn, bid, clock.now()) == results
        assert await write_owed_results(conn, bid, clock.now()) is None  # written: not twice
    assert_results(results)


async def test_a_batch_posted_over_http_owes_no_results_file(
        clock: FakeClock, pool: asyncpg.Pool, api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/batches", headers=AUTH, json={
        "target": "sales", "leads": [{"number": "12"}], "result_webhook_url": "https://crm.example/hook"})
    assert r.status_code == 202, r.text
    assert await Completion(pool, clock).check() == [uuid.UUID(r.json()["batch_id"])]
    assert (await api.get(f"/v1/batches/{r.json()['batch_id']}", headers=AUTH)).json()["state"] == "done"
    assert await owed(pool) == []


@pytest.mark.parametrize("fault", ["format", "statement"])
async def test_a_write_that_fails_for_a_fault_of_its_own_does_not_hold_up_the_others(
        inbox: Inbox, clock: FakeClock, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """Not only file errors: any fault writing one batch's file (a row it cannot format, a
    query the database refuses on its rows, every time) leaves that one owed with its
    backoff; the files owed after it are still written (a refused statement ended each
    sweep there, without a backoff), and it is written once the fault is gone."""
    first = await ingest_rejected_file(inbox, clock)
    bad = await die_before_the_write(pool, clock, monkeypatch)
    drop(inbox, "other.csv", "number\nnot-a-number\n")
    await settle_and_scan(inbox, clock)
    other = first.with_name("other.csv.results.csv")
    real = files.write_results_csv

    async def faulty(conn: asyncpg.Connection, batch_id: uuid.UUID, dest: Path) -> int:
        if batch_id == bad:
            if fault == "format":
                raise ValueError("a row this writer cannot format")
            await conn.execute("SELECT 1 / 0")  # as a row the results query cannot read
        return await real(conn, batch_id, dest)

    monkeypatch.setattr(files, "write_results_csv", faulty)
    await Completion(pool, clock).check()
    assert other.exists() and not first.exists(), sorted(p.name for p in first.parent.parent.rglob("*"))
    [row] = await owed(pool)
    assert (row["id"], row["results_attempts"]) == (bad, 1)
    monkeypatch.setattr(files, "write_results_csv", real)
    clock.advance(files.results_backoff(1).total_seconds() + 1)
    await Completion(pool, clock).check()
    assert_results(first)
    assert await owed(pool) == []
