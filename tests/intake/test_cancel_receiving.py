"""A batch cancelled while its file is still being received, driven against a real
PostgreSQL and a real inbox directory: whenever the cancel lands (between two chunks,
after the last chunk and before the finalise, while the ingest was cut off) it wins. The
ingest stops there, the file is filed with a report saying it was cancelled and how many
rows had been read, it is never read again (the inbox's retry used to ingest it whole into
a new batch, which was dialed), and nothing of it is dialed."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from dialer import metrics
from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.intake import batches, files
from dialer.intake.files import FileIngestor
from dialer.intake.inbox import Inbox
from dialer.intake.pipeline import Chunk, ParseJob
from dialer.results.files import Completion
from tests.conftest import TOKEN, await_for
from tests.intake.test_cut_off import TWO_TARGETS, cut_off, drop_leads, new_inbox, processed
from tests.intake.test_inbox import settle_and_scan
from tests.intake.test_streams import HEADER, csv_rows
from tests.ui.conftest import csrf_of, log_in

ROWS = 1_000
BODY = HEADER + csv_rows(ROWS)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def invalid_in(rows: int) -> int:
    return len(range(0, rows, 97))  # csv_rows: every 97th number is invalid


def cancelled_counts(rows: int) -> dict[str, int]:
    return {"rows": rows, "accepted": 0, "invalid": invalid_in(rows), "duplicate": 0, "dnc": 0,
            "cancelled": rows - invalid_in(rows)}


def cancelled_message(rows: int) -> str:
    return (f"the batch was cancelled while the file was being received, after {rows} rows of it had "
            "been read: none of its leads is dialed (the rows read are cancelled, or rejected as listed; "
            "the file was read no further)")


@pytest.fixture
def chunked(make_settings: Callable[..., Settings]) -> Settings:
    # 100-row chunks: a file of 1,000 rows is ten commits
    return make_settings(settle_s=0.2, inbox_poll_s=0.05, ingest_commit_rows=100, targets=TWO_TARGETS)


@pytest.fixture
async def api(chunked: Settings, pool: asyncpg.Pool, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AppContext(settings=chunked, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


class Held:
    """The next ingest, held before it hands chunk ``before`` (counting those with rows; None:
    the closing marker, after the last one) to COPY, until ``go`` is set."""

    def __init__(self, before: int | None) -> None:
        self.before = before
        self.reached = anyio.Event()
        self.go = anyio.Event()


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], Held]:
    def make(before: int | None) -> Held:
        held = Held(before)
        real = files.chunks_from_thread

        async def chunks(source: Path, job: ParseJob) -> AsyncGenerator[Chunk, None]:
            async with contextlib.aclosing(real(source, job)) as inner:
                i = 0
                async for chunk in inner:
                    here = i == held.before if held.before is not None else not chunk.rows
                    if here and not held.reached.is_set():
                        held.reached.set()
                        await held.go.wait()
                    i += bool(chunk.rows)
                    yield chunk

        monkeypatch.setattr(files, "chunks_from_thread", chunks)
        return held

    return make


async def cancel_when_read(pool: asyncpg.Pool, held: Held, rows: int,
                           cancel: Callable[[Any], Awaitable[Any]]) -> tuple[Any, Any]:
    """Once the held ingest has committed ``rows``, cancel its batch, then let it go on.
    Returns the batch id and what the cancel answered."""
    with anyio.fail_after(30):
        await held.reached.wait()
    bid = await await_for(lambda: pool.fetchval("SELECT id FROM batches WHERE rows_read = $1", rows),
                          30, f"{rows} rows committed")
    try:
        return bid, await cancel(bid)
    finally:
        held.go.set()


def by_api(api: httpx.AsyncClient) -> Callable[[Any], Awaitable[Any]]:
    async def cancel(bid: Any) -> Any:
        r = await api.post(f"/v1/batches/{bid}/cancel", headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()

    return cancel


async def calls_by_batch(pool: asyncpg.Pool) -> dict[str, dict[str, int]]:
    """Every batch, with its calls by state (nothing pending: nothing to dial)."""
    rows = await pool.fetch("SELECT b.id, c.state, count(c.id)::int AS n FROM batches b "
                            "LEFT JOIN calls c ON c.batch_id = b.id GROUP BY b.id, c.state")
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(str(r["id"]), {})
        if r["state"] is not None:
            out[str(r["id"])][r["state"]] = r["n"]
    return out


def read_so_far(rows: int) -> dict[str, int]:
    return {k: n for k, n in (("cancelled", rows - invalid_in(rows)), ("invalid", invalid_in(rows))) if n}


async def scan_while(box: Inbox, clock: FakeClock, held: Held, pool: asyncpg.Pool, rows: int,
                     cancel: Callable[[Any], Awaitable[Any]]) -> tuple[int, Any, Any]:
    """The inbox takes its file while the batch is cancelled once ``rows`` were read."""
    handled: list[int] = []
    async with anyio.create_task_group() as tg:
        async def scan() -> None:
            handled.append(await settle_and_scan(box, clock))

        tg.start_soon(scan)
        bid, answer = await cancel_when_read(pool, held, rows, cancel)
    return handled[0], bid, answer


# before its first chunk, or after three (on one COPY stream, or three: chunks in flight)
@pytest.mark.parametrize(("before", "copy_streams"), [(0, 1), (3, 1), (3, 3)])
async def test_an_inbox_file_cancelled_between_two_chunks_is_filed_cancelled_and_never_read_again(
        make_settings: Callable[..., Settings], pool: asyncpg.Pool, clock: FakeClock,
        hold: Callable[[int | None], Held], before: int, copy_streams: int) -> None:
    s = make_settings(settle_s=0.2, inbox_poll_s=0.05, ingest_commit_rows=100, ingest_copy_streams=copy_streams)
    box = new_inbox(s, pool, clock)
    path = drop_leads(s, "big.csv", BODY)
    read = before * 100
    app = create_app(AppContext(settings=s, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
        handled, bid, answer = await scan_while(box, clock, hold(before), pool, read, by_api(api))
        assert handled == 1  # handled, not left to a retry
        assert answer == {"batch_id": str(bid), "cancelled": read - invalid_in(read)}
        rep = processed(s, clock, "big.csv")
        assert (rep["result"], rep["batch_id"]) == ("cancelled", str(bid))
        assert rep["counts"] == cancelled_counts(read) and rep["message"] == cancelled_message(read)
        assert [r["line"] for r in rep["rejected"]] == [i + 2 for i in range(0, read, 97)]  # invalid rows read
        b = (await api.get(f"/v1/batches/{bid}", headers=AUTH)).json()
    assert (b["state"], b["counts"], b["ingested_at"], b["calls_by_state"]) == (
        "cancelled", cancelled_counts(read), None, {"cancelled": read - invalid_in(read)} if read else {})
    day = s.inbox / "processed" / clock.now().astimezone().date().isoformat()
    assert not path.exists() and (day / "big.csv").read_text() == BODY
    assert not list((s.inbox / "failed").iterdir())
    assert await calls_by_batch(pool) == {str(bid): read_so_far(read)}

    # the inbox retries nothing: a while on, its scans find nothing to do
    clock.advance(120)
    assert await box.scan_once() == 0
    # completion ends the batch, and its results file follows (SPEC §6: whatever ended it):
    # a row per lead read by then, each cancelled (or invalid)
    assert await Completion(pool, clock).check() == [bid]
    assert sorted(p.name for p in day.iterdir()) == ["big.csv", "big.csv.report.json", "big.csv.results.csv"]
    with (day / "big.csv.results.csv").open(newline="") as f:
        states = [r["state"] for r in csv.DictReader(f)]
    assert len(states) == read and states.count("cancelled") == read - invalid_in(read)
    # dropped again, the same content is a duplicate of the cancelled batch, as any file received
    drop_leads(s, "big.csv", BODY)
    assert await settle_and_scan(box, clock) == 1
    again = processed(s, clock, "big-2.csv")
    assert again["result"] == "duplicate" and again["duplicate_of"]["batch_id"] == str(bid)
    assert again["message"] == ("the same content was already received and its batch cancelled while it "
                                "was read; nothing was ingested again")
    assert await calls_by_batch(pool) == {str(bid): read_so_far(read)}


async def test_a_batch_cancelled_after_its_last_chunk_is_never_finalised(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, api: httpx.AsyncClient,
        hold: Callable[[int | None], Held]) -> None:
    box = new_inbox(chunked, pool, clock)
    drop_leads(chunked, "all.csv", BODY)
    handled, bid, answer = await scan_while(box, clock, hold(None), pool, ROWS, by_api(api))
    assert handled == 1 and answer["cancelled"] == ROWS - invalid_in(ROWS)
    rep = processed(chunked, clock, "all.csv")
    assert rep["result"] == "cancelled" and rep["counts"] == cancelled_counts(ROWS)
    assert len(rep["rejected"]) == invalid_in(ROWS)
    async with pool.acquire() as conn:
        b = await conn.fetchrow("SELECT state, ingested_at FROM batches WHERE id = $1", bid)
        f = await conn.fetchrow("SELECT state, filed_path FROM inbox_files")
    assert (b["state"], b["ingested_at"]) == ("cancelled", None)
    assert f["state"] == "filed" and f["filed_path"].endswith(b"/all.csv")
    assert await calls_by_batch(pool) == {str(bid): read_so_far(ROWS)}


@pytest.fixture
def counted(chunked: Settings, monkeypatch: pytest.MonkeyPatch) -> metrics.Metrics:
    """The metrics the inbox counts into, as the daemon's."""
    m = metrics.Metrics(chunked.targets)
    monkeypatch.setattr(metrics, "_current", m)
    return m


def cancelled_files(m: metrics.Metrics, target: str) -> float | None:
    return m.registry.get_sample_value("dialer_inbox_files_total", {"target": target, "result": "cancelled"})


@pytest.mark.parametrize("where", ["kept", "moved to another target", "removed"])
async def test_a_batch_cancelled_while_its_ingest_was_cut_off_is_not_read_again(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str, api: httpx.AsyncClient,
        counted: metrics.Metrics, where: str) -> None:
    """The daemon killed mid-file, the batch cancelled meanwhile (another instance's API):
    at the restart the file is filed as cancelled, not ingested again from scratch; its
    report names the batch's target, wherever the file is now."""
    path = drop_leads(chunked, "cut.csv", BODY)
    batch = await cut_off(chunked, pool, db_url, clock, path)
    read = batch["rows_read"]
    assert (await by_api(api)(batch["id"]))["cancelled"] == read - invalid_in(read)
    assert await Completion(pool, clock).check() == [batch["id"]]  # nothing left: done
    if where == "moved to another target":
        (chunked.inbox / "renewals").mkdir(exist_ok=True)
        path.rename(chunked.inbox / "renewals" / "cut.csv")
    elif where == "removed":
        path.unlink()
    box = new_inbox(chunked, pool, clock)
    if where == "removed":
        assert await box.scan_once() == 0  # the cut-off check: it stays cancelled, no note
        assert not list((chunked.inbox / "failed").iterdir())
        drop_leads(chunked, "cut.csv", BODY)  # dropped again: its batch was cancelled
    assert await settle_and_scan(box, clock) == 1
    rep = processed(chunked, clock, "cut.csv")
    assert (rep["result"], rep["batch_id"], rep["target"]) == ("cancelled", str(batch["id"]), "sales")
    assert rep["counts"] == cancelled_counts(read)
    assert (cancelled_files(counted, "sales"), cancelled_files(counted, "renewals")) == (1, 0)
    assert await calls_by_batch(pool) == {str(batch["id"]): read_so_far(read)}
    assert not list((chunked.inbox / "failed").iterdir())


async def test_a_cut_off_batch_cancelled_as_its_file_is_taken_for_another_target_names_its_own(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str, api: httpx.AsyncClient,
        counted: metrics.Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut off for 'sales', the file moved to renewals/: the cancel lands as the inbox opens
    the new batch for 'renewals' (before it fails the cut-off one). The cancel stands, the new
    batch is rolled back, and the report names the cancelled batch's target, not the folder's."""
    path = drop_leads(chunked, "cut.csv", BODY)
    batch = await cut_off(chunked, pool, db_url, clock, path)
    read = batch["rows_read"]
    (chunked.inbox / "renewals").mkdir(exist_ok=True)
    path.rename(chunked.inbox / "renewals" / "cut.csv")
    real = batches.create_batch
    answers: list[Any] = []

    async def cancel_first(conn: asyncpg.Connection, **kw: Any) -> Any:
        if not answers:
            answers.append(await by_api(api)(batch["id"]))
        return await real(conn, **kw)

    monkeypatch.setattr(batches, "create_batch", cancel_first)
    box = new_inbox(chunked, pool, clock)
    assert await settle_and_scan(box, clock) == 1
    assert answers == [{"batch_id": str(batch["id"]), "cancelled": read - invalid_in(read)}]
    rep = processed(chunked, clock, "cut.csv")
    assert (rep["result"], rep["batch_id"], rep["target"]) == ("cancelled", str(batch["id"]), "sales")
    assert rep["counts"] == cancelled_counts(read) and rep["message"] == cancelled_message(read)
    assert (cancelled_files(counted, "sales"), cancelled_files(counted, "renewals")) == (1, 0)
    assert await calls_by_batch(pool) == {str(batch["id"]): read_so_far(read)}  # no batch for renewals
    async with pool.acquire() as conn:
        f = await conn.fetchrow("SELECT state, target, batch_id FROM inbox_files")
    assert (f["state"], f["target"], f["batch_id"]) == ("filed", "sales", batch["id"])
    assert not list((chunked.inbox / "failed").iterdir())


async def test_a_cancel_stands_over_a_file_found_unreadable_after_it(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, api: httpx.AsyncClient,
        hold: Callable[[int | None], Held]) -> None:
    """The reader fails on the file's tail (past line 350) once the batch was cancelled: the
    batch is not failed over the cancel (its cancelled calls deleted), the file is filed
    cancelled."""
    leads = ",".join(json.dumps({"number": f"+1415{2000000 + i:07d}"}) for i in range(350))
    drop_leads(chunked, "tail.json", f'[{leads}, {{"number": }}]')
    box = new_inbox(chunked, pool, clock)
    handled, bid, answer = await scan_while(box, clock, hold(2), pool, 200, by_api(api))
    assert handled == 1 and answer["cancelled"] == 200
    rep = processed(chunked, clock, "tail.json")
    assert (rep["result"], rep["counts"]) == ("cancelled", {**cancelled_counts(200), "invalid": 0, "cancelled": 200})
    assert await calls_by_batch(pool) == {str(bid): {"cancelled": 200}}
    assert not list((chunked.inbox / "failed").iterdir())


async def test_a_console_upload_cancelled_from_the_console_while_it_is_read(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, hold: Callable[[int | None], Held]) -> None:
    app = create_app(AppContext(settings=chunked, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        assert (await log_in(c)).status_code == 303
        csrf = csrf_of((await c.get("/ui/batches")).text)

        async def from_console(bid: Any) -> Any:
            r = await c.post(f"/ui/batches/{bid}/cancel", data={"csrf": csrf})
            assert r.status_code == 303, r.text
            return r.headers["location"]

        held = hold(5)
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:
            async def upload() -> None:
                answers.append(await c.post("/ui/upload", data={"csrf": csrf, "target": "sales"},
                                            files={"file": ("crm.csv", BODY.encode(), "text/csv")}))

            tg.start_soon(upload)
            bid, went = await cancel_when_read(pool, held, 500, from_console)
        assert went == f"/ui/batches/{bid}?cancelled={500 - invalid_in(500)}"
        loc = answers[0].headers["location"]
        assert answers[0].status_code == 303 and loc == f"/ui/batches/{bid}?upload=cancelled&name=crm.csv"
        page = (await c.get(loc)).text
        assert "crm.csv: this batch was cancelled while the file was being received" in page
        assert ("This batch was cancelled while its file was being received, after 500 rows had been read: "
                "none of its leads will be dialed") in page  # whenever the page is opened
        assert "Every row was accepted" not in page
        report = (await c.get(f"/ui/batches/{bid}/report.json")).json()
    assert report["result"] == "cancelled" and report["counts"] == cancelled_counts(500)
    kept = chunked.state_dir / "uploads" / clock.now().astimezone().date().isoformat()
    assert json.loads((kept / "crm.csv.report.json").read_text())["counts"] == cancelled_counts(500)
    assert (kept / "crm.csv").read_text() == BODY
    assert not list((chunked.state_dir / "uploads" / ".incoming").iterdir())
    assert await calls_by_batch(pool) == {str(bid): read_so_far(500)}


async def test_a_cli_ingest_cancelled_while_it_reads_stops_there(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, api: httpx.AsyncClient, tmp_path: Path,
        hold: Callable[[int | None], Held]) -> None:
    path = tmp_path / "cli.csv"
    path.write_text(BODY)
    ingestor = FileIngestor(pool, chunked, clock)
    outcomes: list[files.FileOutcome] = []
    async with anyio.create_task_group() as tg:
        async def ingest() -> None:
            outcomes.append(await ingestor.ingest(path, "sales", source="cli"))

        tg.start_soon(ingest)
        bid, _ = await cancel_when_read(pool, hold(2), 200, by_api(api))
    out = outcomes[0]
    assert (out.kind, out.batch_id, out.counts) == ("cancelled", bid, cancelled_counts(200))
    again = await ingestor.ingest(path, "sales", source="cli")  # run again: nothing more is read
    assert (again.kind, again.batch_id, again.cancelled) == ("duplicate", bid, True)
    assert await calls_by_batch(pool) == {str(bid): read_so_far(200)}


async def test_dialer_ingest_run_again_on_a_cancelled_batch_prints_its_report_and_fails(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, db_url: str, api: httpx.AsyncClient,
        tmp_path: Path) -> None:
    """Killed mid-file, its batch cancelled meanwhile: the rerun resumes nothing."""
    path = tmp_path / "cli.csv"
    path.write_text(BODY)
    batch = await cut_off(chunked, pool, db_url, clock, path, source="cli")
    await by_api(api)(batch["id"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(DIALER_DATABASE_URL=db_url, DIALER_STATE_DIR=str(tmp_path / "var"), DIALER_LOG_FORMAT="json")
    r = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "dialer", "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=180))
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert (rep["result"], rep["batch_id"]) == ("cancelled", str(batch["id"]))
    assert rep["counts"] == cancelled_counts(batch["rows_read"])
    assert (f"error: cli.csv: batch {batch['id']} was cancelled while the file was being received; "
            "none of its leads is dialed") in r.stderr
    assert await calls_by_batch(pool) == {str(batch["id"]): read_so_far(batch["rows_read"])}


def lock_waits(pool: asyncpg.Pool, n: int) -> Callable[[], Awaitable[bool]]:
    """Whether ``n`` sessions (or more) wait for a lock."""
    async def enough() -> bool:
        return bool(await pool.fetchval("SELECT count(*) >= $1 FROM pg_stat_activity WHERE "
                                        "wait_event_type = 'Lock' AND datname = current_database()", n))

    return enough


async def test_a_cancel_landing_during_the_finalise_waits_for_it_then_cancels_every_call(
        chunked: Settings, pool: asyncpg.Pool, clock: FakeClock, api: httpx.AsyncClient,
        hold: Callable[[int | None], Held]) -> None:
    """The finalise marks duplicates and do-not-call numbers while the cancel ends the waiting
    calls: had they each locked some of the batch's calls first, they deadlocked (one of them
    failed: a 500 for the cancel, or a finalise the inbox retried). Both take the batch's row
    first: the cancel waits for the finalise, then ends every call it left dialable."""
    await pool.execute("INSERT INTO dnc (e164, source) VALUES ('+14152000010', 'api')")  # line 12's
    # lines 1002 and 1003 repeat lines 502 and 702: the finalise's collapse marks them
    drop_leads(chunked, "dups.csv", BODY + "+14152000500,0,again\n+14152000700,0,again\n")
    box = new_inbox(chunked, pool, clock)
    held = hold(None)
    handled: list[int] = []
    answers: list[httpx.Response] = []
    async with anyio.create_task_group() as tg:
        async def scan() -> None:
            handled.append(await settle_and_scan(box, clock))

        tg.start_soon(scan)
        with anyio.fail_after(30):
            await held.reached.wait()
        bid = await await_for(lambda: pool.fetchval("SELECT id FROM batches WHERE rows_read = $1", ROWS + 2),
                              30, "every row committed")
        async with pool.acquire() as holder, holder.transaction():
            # the finalise will wait for this row; the cancel comes in meanwhile
            await holder.execute("SELECT 1 FROM calls WHERE batch_id = $1 AND line = 1003 FOR UPDATE", bid)
            held.go.set()
            await await_for(lock_waits(pool, 1), 30, "the finalise waiting")

            async def cancel() -> None:
                answers.append(await api.post(f"/v1/batches/{bid}/cancel", headers=AUTH))

            tg.start_soon(cancel)
            await await_for(lock_waits(pool, 2), 30, "the cancel waiting too")
    accepted = ROWS - invalid_in(ROWS) - 1  # less line 12's number, on the list
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["cancelled"] == accepted
    assert handled == [1]
    rep = processed(chunked, clock, "dups.csv")  # received whole before the cancel: ingested
    assert rep["result"] == "ingested" and rep["counts"] == {
        "rows": ROWS + 2, "accepted": accepted, "invalid": invalid_in(ROWS), "duplicate": 2, "dnc": 1}
    assert await calls_by_batch(pool) == {str(bid): {"cancelled": accepted, "invalid": invalid_in(ROWS),
                                                     "duplicate": 2, "dnc": 1}}
    assert (await pool.fetchval("SELECT state FROM batches")) == "cancelled"
