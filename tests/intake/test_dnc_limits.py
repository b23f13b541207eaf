"""A do-not-call import's statements over the whole file (the merge into the list, the cancel
of the calls now listed with their events, the result webhooks, the several-number leads
going on) run under limits scaled by its numbers: a national registry's file is never refused
for its size, a lock wait still ends, and an import that fails stores nothing.

The un-scaled limit (``limits.BULK_BASE_S``, 60 s) is lowered to 1 ms, in which no statement
over a file of a few thousand numbers runs: what a file of millions meets at 60 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.errors import Busy, TimedOut
from dialer.intake import dnc
from dialer.intake.files import FileIngestor
from dialer.store import limits
from dialer.store.database import create_pool
from tests.intake.test_finalise_limits import dialer

NO_TIME = 0.001  # as the base: no statement over thousands of numbers runs in 1 ms
WEBHOOK = "http://127.0.0.1:9/results"  # never delivered here: only what is enqueued counts


def number(i: int) -> str:
    return f"+1415{2000000 + i:07d}"


def spare(i: int) -> str:
    return f"+1415{3000000 + i:07d}"


async def waiting_leads(pool: asyncpg.Pool, settings: Settings, clock: FakeClock, path: Path,
                        single: range, several: range = range(0)) -> None:
    """Leads of 'sales' not yet sent, their batch with a result webhook: one number each for
    ``single``, a spare second number for ``several``."""
    path.write_text("number,number2,external_id\n"
                    + "".join(f"{number(i)},,s{i}\n" for i in single)
                    + "".join(f"{number(i)},{spare(i)},m{i}\n" for i in several))
    outcome = await FileIngestor(pool, settings, clock).ingest(path, "sales", source="cli")
    assert outcome.kind == "ingested" and outcome.counts is not None
    assert outcome.counts["accepted"] == len(single) + len(several)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE batches SET result_webhook_url = $1", WEBHOOK)


async def state_of(pool: asyncpg.Pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM dnc) AS listed,"
            " (SELECT count(*) FROM calls WHERE state = 'pending') AS pending,"
            " (SELECT count(*) FROM calls WHERE state = 'cancelled' AND reason = 'dnc') AS cancelled,"
            " (SELECT count(*) FROM calls WHERE lead_id IS NOT NULL) AS went_on,"
            " (SELECT count(*) FROM call_events WHERE kind = 'cancelled') AS events,"
            " (SELECT count(DISTINCT call_id) FROM call_events WHERE kind = 'cancelled') AS calls_with_event,"
            " (SELECT count(*) FROM webhook_outbox) AS webhooks,"
            " (SELECT count(DISTINCT call_id) FROM webhook_outbox) AS calls_with_webhook")
    return dict(row)


async def test_a_big_import_gets_time_for_its_numbers_and_one_that_failed_stored_nothing(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 600 waiting one-number leads and 50 with a spare number, all on the file
    await waiting_leads(pool, settings, clock, tmp_path / "leads.csv", range(600), range(600, 650))
    await dnc.add_numbers(pool, [number(4999)], source="api", now=clock.now(), targets=settings.targets)
    path = tmp_path / "registry.txt"
    path.write_text("phone\n" + "".join(f"{number(i)[2:]}\n" for i in range(5000)) + "not-a-number\n")
    before = await state_of(pool)
    assert (before["listed"], before["pending"], before["cancelled"]) == (1, 650, 0)

    monkeypatch.setattr(limits, "BULK_BASE_S", NO_TIME)
    per_row = limits.BULK_ROW_S
    monkeypatch.setattr(limits, "BULK_ROW_S", 0.0)  # un-scaled: the old flat limit
    with pytest.raises(TimedOut) as stopped:
        await dnc.import_file(pool, path, region="US", source="registry", now=clock.now(),
                              targets=settings.targets)
    cause = stopped.value.__cause__
    assert isinstance(cause, asyncpg.QueryCanceledError) and "canceling statement due to statement timeout" in str(cause)
    assert stopped.value.http_status == 503 and "nothing of it was stored" in stopped.value.message
    assert await state_of(pool) == before  # one transaction: nothing listed, nothing cancelled

    monkeypatch.setattr(limits, "BULK_ROW_S", per_row)  # scaled: 1 ms plus this much a number
    report = await dnc.import_file(pool, path, region="US", source="registry", now=clock.now(),
                                   targets=settings.targets)
    assert (report.lines, report.valid, report.invalid) == (5002, 5000, 1)
    assert (report.added, report.updated, report.cancelled_calls) == (4999, 1, 650)
    after = await state_of(pool)
    assert (after["listed"], after["pending"], after["cancelled"]) == (5000, 0, 650)
    assert after["went_on"] == 50  # each several-number lead goes on to its spare number
    assert after["events"] == after["calls_with_event"] == 650  # each call cancelled once, audited
    assert after["webhooks"] == after["calls_with_webhook"] == 650  # and its result posted once
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE lead_id IS NOT NULL AND e164 LIKE '+14153%'"
                                   " AND state IN ('pending', 'retry_wait')") == 50


async def test_the_imports_statements_are_not_held_to_the_pools_command_timeout(
        settings: Settings, db_url: str, clock: FakeClock, tmp_path: Path) -> None:
    """asyncpg ends a call at the pool's command timeout on the client side, whatever the
    server allows: each of the import's calls over the whole file passes the file's own. Here
    the pool allows 1 s and triggers make the merge, the cancel and the result webhook each
    take 1.5 s (in production: 60 s, and millions of numbers)."""
    pool = await create_pool(db_url, min_size=1, max_size=2, command_timeout=1.0)
    try:
        await waiting_leads(pool, settings, clock, tmp_path / "leads.csv", range(1, 3))
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$;"
                f"CREATE TRIGGER slow_listing BEFORE INSERT ON dnc FOR EACH ROW "
                f"WHEN (NEW.e164 = '{number(1)}') EXECUTE FUNCTION slow_row();"
                f"CREATE TRIGGER slow_cancel BEFORE UPDATE ON calls FOR EACH ROW "
                f"WHEN (OLD.e164 = '{number(1)}' AND NEW.state = 'cancelled') EXECUTE FUNCTION slow_row();"
                "CREATE TRIGGER slow_webhook BEFORE INSERT ON webhook_outbox FOR EACH ROW "
                "EXECUTE FUNCTION slow_row()")
        with anyio.fail_after(60):  # a hang guard, not a measurement
            report = await dnc.import_bytes(pool, f"{number(1)}\n{number(3)}\n".encode(), region="US",
                                            source="registry", now=clock.now(), targets=settings.targets)
        assert (report.added, report.updated, report.cancelled_calls) == (2, 0, 1)
        after = await state_of(pool)
        assert (after["listed"], after["pending"], after["cancelled"], after["events"], after["webhooks"]) \
            == (2, 1, 1, 1, 1)
    finally:
        await pool.close()


async def test_a_lock_wait_still_ends_whatever_the_files_size(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's finalise holds its target's dedupe lock (here another session that never lets
    go): the import's wait for it (hold_for_dnc) ends after half the base limit (30 s; here
    0.2 s), not the file's, as Busy (the API's 503) naming the lock; nothing is stored, and
    the same file imports in full once the lock is free."""
    await waiting_leads(pool, settings, clock, tmp_path / "leads.csv", range(3))
    path = tmp_path / "registry.txt"
    path.write_text("".join(f"{number(i)}\n" for i in range(3000)))
    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)
    before = await state_of(pool)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            with anyio.fail_after(30), pytest.raises(Busy) as busy:
                await dnc.import_file(pool, path, region="US", source="registry", now=clock.now(),
                                      targets=settings.targets)
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
    cause = busy.value.__cause__
    assert isinstance(cause, asyncpg.LockNotAvailableError) and "canceling statement due to lock timeout" in str(cause)
    assert busy.value.http_status == 503 and "nothing of it was stored" in busy.value.message
    assert await state_of(pool) == before

    report = await dnc.import_file(pool, path, region="US", source="registry", now=clock.now(),
                                   targets=settings.targets)
    assert (report.added, report.cancelled_calls) == (3000, 3)
    after = await state_of(pool)
    assert (after["listed"], after["pending"], after["cancelled"], after["events"]) == (3000, 0, 3, 3)


async def test_dialer_dnc_import_that_runs_past_its_time_limit_says_so_and_stores_nothing(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock, db_url: str, tmp_path: Path) -> None:
    """Not a traceback: the command exits 1 saying nothing was stored; run again, it imports."""
    await waiting_leads(pool, settings, clock, tmp_path / "leads.csv", range(3))
    path = tmp_path / "registry.txt"
    path.write_text("".join(f"{number(i)}\n" for i in range(5000)))
    before = await state_of(pool)
    args = ["dnc", "import", str(path)]
    r = await anyio.to_thread.run_sync(lambda: dialer(args, db_url, tmp_path, BULK_BASE_S=NO_TIME, BULK_ROW_S=0.0))
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("error: the do-not-call import was stopped: one of its steps ran past the 0.001 s its 5000 numbers "
            "allow; nothing of it was stored: retry later, or import the file in smaller parts") in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert await state_of(pool) == before

    r = await anyio.to_thread.run_sync(lambda: dialer(args, db_url, tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["added"] == 5000
    after = await state_of(pool)
    assert (after["listed"], after["pending"], after["cancelled"]) == (5000, 0, 3)


async def test_numbers_listed_by_the_api_wait_a_bounded_time_for_a_lock(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /v1/dnc's JSON list: a finalise holding the target's dedupe lock makes it Busy (the
    API's 503 busy) after the same bounded wait, not the pool's timeout (503 "database
    unavailable", after 60 s); nothing is listed, and the same numbers list once it is free."""
    await waiting_leads(pool, settings, clock, tmp_path / "leads.csv", range(3))
    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)
    before = await state_of(pool)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            with anyio.fail_after(30), pytest.raises(Busy) as busy:
                await dnc.add_numbers(pool, [number(0), number(1)], source="api", now=clock.now(),
                                      targets=settings.targets)
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
    assert isinstance(busy.value.__cause__, asyncpg.LockNotAvailableError)
    assert busy.value.http_status == 503 and "none of them was listed" in busy.value.message
    assert await state_of(pool) == before

    assert await dnc.add_numbers(pool, [number(0), number(1)], source="api", now=clock.now(),
                                 targets=settings.targets) == (2, 0)
    after = await state_of(pool)
    assert (after["listed"], after["pending"], after["cancelled"]) == (2, 1, 2)
