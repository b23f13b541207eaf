"""Two calls never go live on one number when leads move between numbers concurrently
(SPEC §6 "Leads with several numbers", "Validation"): a several-number lead going on
waits for a finalise of its target and for another lead moving onto the same number,
and the DNC paths apply the target's dedupe window like a callback does.

Each race is driven step by step on two connections: one transaction is held open at
the point where the other used to miss it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake import batches, dnc
from dialer.intake.submit import Submission, submit
from dialer.lifecycle import next_number
from dialer.lifecycle.states import State
from dialer.store.queries import Q
from tests.conftest import await_for

N1, N2, N3, N4 = "+14155550101", "+14155550102", "+14155550103", "+14155550104"
LIVE = "state NOT IN ('invalid', 'duplicate', 'dnc') AND ended_at IS NULL"


async def post(pool: asyncpg.Pool, settings: Settings, clock: FakeClock, number: str, **more: Any) -> int:
    status, out = await submit(pool, settings, clock, Submission(target="sales", rows=[{"number": number,
                                                                                        **more}]))
    assert status == 202 and out["accepted"] == 1, out
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT max(id) FROM calls"))


async def end(pool: asyncpg.Pool, call_id: int, state: str, clock: FakeClock) -> None:
    """The call was dialed and ended (its callback's own follow-up is what the test runs)."""
    async with pool.acquire() as conn:
        await conn.execute("UPDATE calls SET state = $2, submitted_at = $3, ended_at = $3 WHERE id = $1",
                           call_id, state, clock.now())


async def go_on(conn: asyncpg.Connection, settings: Settings, call_id: int, clock: FakeClock) -> int | None:
    async with conn.transaction():
        row = await conn.fetchrow(Q.call_ended_row, call_id)
        return await next_number.next_attempt(conn, row, State.NO_ANSWER, settings.targets["sales"],
                                              clock.now())


async def blocked_or_done(pool: asyncpg.Pool, conn: asyncpg.Connection, task: asyncio.Task[Any]) -> bool:
    """The task finished, or its connection waits for a lock (what the fix makes it do)."""
    if task.done():
        return True
    async with pool.acquire() as probe:
        return bool(await probe.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                                         conn.get_server_pid()))


async def live_on(pool: asyncpg.Pool, number: str) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(f"SELECT count(*) FROM calls WHERE e164 = $1 AND {LIVE}", number))


async def test_a_lead_going_on_waits_for_a_finalise_that_takes_its_next_number(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    """Lead A (N1, then N2) ends on N1 while another batch holding N2 is being finalised.
    Before the fix, A's move did not see the batch (still receiving) and the finalise did not
    see A's uncommitted attempt: both went live on N2."""
    a = await post(pool, settings, clock, N1, number2=N2)
    await end(pool, a, "no_answer", clock)
    async with pool.acquire() as conn:
        bid = await batches.create_batch(conn, target="sales", source="api", now=clock.now())
        await conn.execute("INSERT INTO calls (batch_id, target, line, raw_number, e164) VALUES ($1, 'sales', 0, $2, $2)",
                           bid, N2)
    async with pool.acquire() as fin, pool.acquire() as mover:
        tx = fin.transaction()
        await tx.start()
        counts = await batches.finalise(fin, bid, "sales", settings.targets["sales"], clock.now())
        assert counts["accepted"] == 1  # A's N2 is no call yet: the batch's lead is accepted
        task = asyncio.create_task(go_on(mover, settings, a, clock))
        await await_for(lambda: blocked_or_done(pool, mover, task), timeout=10, what="the move to wait")
        await tx.commit()
        assert await asyncio.wait_for(task, 10) is None  # N2 is the batch's now: A has no number left
    assert await live_on(pool, N2) == 1


async def test_two_leads_going_on_to_the_same_number_do_not_both_take_it(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    """Leads A (N1, N3) and B (N2, N3) end at the same moment in two transactions. Before the
    fix each missed the other's uncommitted attempt on N3 and both dialed it."""
    a = await post(pool, settings, clock, N1, number2=N3)
    b = await post(pool, settings, clock, N2, number2=N4)
    async with pool.acquire() as conn:  # B's spare is N3 too (ingest kept it from A's spare: no call yet)
        await conn.execute("UPDATE calls SET numbers = $2 WHERE id = $1", b, [N2, N3])
    await end(pool, a, "no_answer", clock)
    await end(pool, b, "no_answer", clock)
    async with pool.acquire() as first, pool.acquire() as second:
        tx = first.transaction()
        await tx.start()
        row = await first.fetchrow(Q.call_ended_row, a)
        assert await next_number.next_attempt(first, row, State.NO_ANSWER, settings.targets["sales"],
                                              clock.now())
        task = asyncio.create_task(go_on(second, settings, b, clock))
        await await_for(lambda: blocked_or_done(pool, second, task), timeout=10, what="B's move to wait")
        await tx.commit()
        assert await asyncio.wait_for(task, 10) is None  # N3 is A's now, N2 was just tried
    assert await live_on(pool, N3) == 1
    async with pool.acquire() as conn:
        ev = await conn.fetchval("SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'numbers_exhausted'",
                                 b)
    assert ev["skipped"][0]["number"] == N3
    assert ev["skipped"][0]["reason"].startswith("number already has a live call")


@pytest.mark.parametrize("listed_by", ["api", "import"])
async def test_a_lead_moved_on_by_the_dnc_list_respects_the_dedupe_window(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock, listed_by: str) -> None:
    """Lead A (N1, then N2) waits on N1; lead B called N2 an hour ago (within the target's
    24 h dedupe window). N1 goes on the DNC list: A moves on, but not to N2. Before the fix
    the DNC paths knew no target and counted only live calls."""
    a = await post(pool, settings, clock, N1, number2=N2)
    b = await post(pool, settings, clock, N2)
    await end(pool, b, "busy", clock)
    clock.advance(3600)
    assert settings.targets["sales"].dedupe_window_h > 1
    if listed_by == "api":
        await dnc.add_numbers(pool, [N1], source="api", now=clock.now(), targets=settings.targets)
    else:
        await dnc.import_bytes(pool, f"{N1}\n".encode(), region="US", source="import", now=clock.now(),
                               targets=settings.targets)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM calls WHERE id = $1", a) == "cancelled"
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE e164 = $1", N2) == 1  # B's only
        ev = await conn.fetchval("SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'numbers_exhausted'",
                                 a)
    assert ev["skipped"][0] == {"number": N2, "reason": f"number was called within the dedupe window (call {b})"}


async def test_leads_going_on_at_once_with_the_dnc_list_never_put_two_live_calls_on_a_number(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    """Pairs of several-number leads (in two batches) whose spare numbers are the same, ended
    at once by two movers while the DNC list grows, each move held uncommitted a moment: the
    locks cause no deadlock or error, and no number ends up with two live calls (without the
    locks in next_attempt it does)."""
    import random

    rnd = random.Random(17)
    pool_numbers = [f"+1415555{n:04d}" for n in range(200, 260)]
    errors: list[BaseException] = []

    ingested, listed = asyncio.Event(), asyncio.Event()

    async def ingest() -> None:
        # batches 2k and 2k+1 share their second numbers: each is another lead's spare (no
        # call yet, so ingest keeps it), and both leads go on to it when their first ends
        for j in range(12):
            rows = [{"number": f"+1312555{j:02d}{i:02d}", "number2": pool_numbers[(6 * (j // 2) + i) % 36],
                     "number3": rnd.choice(pool_numbers[36:])} for i in range(6)]
            await submit(pool, settings, clock, Submission(target="sales", rows=rows))
        ingested.set()

    async def list_numbers() -> None:
        await ingested.wait()
        for _ in range(8):
            await dnc.add_numbers(pool, rnd.sample(pool_numbers, 1), source="api", now=clock.now(),
                                  targets=settings.targets)
            await asyncio.sleep(0)
        listed.set()

    async def move_on() -> None:
        await ingested.wait()
        while True:  # until nothing is left to end once the other work is done
            async with pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT id FROM calls WHERE numbers IS NOT NULL AND state IN ('pending', 'retry_wait') "
                    "AND batch_id IN (SELECT id FROM batches WHERE state = 'ingested') "
                    "ORDER BY numbers[2], id LIMIT 1 FOR UPDATE SKIP LOCKED")  # the two movers take partners
                if row is None:
                    if ingested.is_set() and listed.is_set():
                        return
                    await asyncio.sleep(0.005)
                    continue
                await conn.execute("UPDATE calls SET state = 'no_answer', submitted_at = $2, ended_at = $2 "
                                   "WHERE id = $1", row["id"], clock.now())
                ended = await conn.fetchrow(Q.call_ended_row, row["id"])
                await next_number.next_attempt(conn, ended, State.NO_ANSWER, settings.targets["sales"],
                                               clock.now())
                # hold the move uncommitted a moment (a callback's webhook and events take
                # that long): the other mover and a finalise then run inside its window
                await asyncio.sleep(rnd.uniform(0, 0.01))

    async def guarded(coro: Any) -> None:
        try:
            await coro
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    await asyncio.gather(*(guarded(c) for c in (ingest(), list_numbers(), move_on(), move_on())))
    assert not errors, errors
    async with pool.acquire() as conn:
        # the movers end every call, so "two live at once" is read as "two leads dialed it":
        # within the 24 h dedupe window only one lead may ever take a number
        twice = await conn.fetch("SELECT e164, array_agg(id ORDER BY id) AS ids FROM calls "
                                 "WHERE state NOT IN ('invalid', 'duplicate', 'dnc', 'cancelled') "
                                 "GROUP BY target, e164 HAVING count(DISTINCT coalesce(lead_id, id)) > 1")
        ended, moved, left = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'no_answer'), count(*) FILTER (WHERE attempt > 1), "
            "count(*) FILTER (WHERE numbers IS NOT NULL AND state IN ('pending', 'retry_wait')) FROM calls")
    assert left == 0 and ended >= 10 and moved >= 3  # every lead went on until none was left
    assert [tuple(r) for r in twice] == []


async def test_a_deadlock_on_the_number_locks_costs_the_statement_not_the_transaction(pool: asyncpg.Pool) -> None:
    """A dispatch fill takes its cap locks in more than one run, so it can close a cycle
    with a DNC import moving leads on. The deadlock detector then aborts one waiter; when it
    is ours, only the lock statement is lost and runs again: the import's work stays."""
    async with pool.acquire() as ours, pool.acquire() as fill:
        await ours.execute("SET deadlock_timeout = '50ms'")  # ours detects the cycle, not the fill
        await fill.execute("SET deadlock_timeout = '10s'")
        tx, ftx = ours.transaction(), fill.transaction()
        await tx.start()
        await ftx.start()
        await ours.execute("CREATE TEMP TABLE work (x int) ON COMMIT DROP; INSERT INTO work VALUES (1)")
        await fill.execute(Q.number_locks, [N4])  # the fill's first run (an owner's callback)
        task = asyncio.create_task(next_number.lock_numbers(ours, [N4, N1]))  # takes N1, waits for N4
        await await_for(lambda: blocked_or_done(pool, ours, task), timeout=10, what="ours to wait")
        await fill.execute(Q.number_locks, [N1])  # the fill's second run: a cycle; ours gives way
        await ftx.commit()
        await asyncio.wait_for(task, 10)
        assert await ours.fetchval("SELECT count(*) FROM work") == 1  # the transaction lives on
        await tx.commit()


async def test_a_number_listed_while_its_batch_is_receiving_is_left_to_the_finalise(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    """A several-number lead of a batch still receiving rows: listing its first number does
    not cancel it and move it on inside the unfinished batch (that attempt would escape the
    batch's dedupe); the finalise drops the listed number and keeps the lead on the other."""
    async with pool.acquire() as conn:
        bid = await batches.create_batch(conn, target="sales", source="api", now=clock.now())
        await conn.execute("INSERT INTO calls (batch_id, target, line, raw_number, e164, numbers) "
                           "VALUES ($1, 'sales', 0, $2, $2, $3)", bid, N1, [N1, N2])
    await dnc.add_numbers(pool, [N1], source="api", now=clock.now(), targets=settings.targets)
    async with pool.acquire() as conn, conn.transaction():
        counts = await batches.finalise(conn, bid, "sales", settings.targets["sales"], clock.now())
    assert counts["accepted"] == 1 and counts["dnc"] == 0
    async with pool.acquire() as conn:
        calls = [tuple(r) for r in await conn.fetch("SELECT e164, state, numbers FROM calls ORDER BY id")]
    assert calls == [(N2, "pending", None)]


async def test_a_dnc_addition_waits_for_the_finalise_of_a_target_a_reload_removed(
        pool: asyncpg.Pool, settings: Settings, clock: FakeClock) -> None:
    """A file of a target the last reload removed is still being finalised: the addition
    holds that target's dedupe lock too, so it cancels the call once the finalise committed
    (without: it left the 'receiving' batch to a finalise that had read the list already)."""
    async with pool.acquire() as conn:
        bid = await batches.create_batch(conn, target="gone", source="inbox", now=clock.now())
        await conn.execute("INSERT INTO calls (batch_id, target, line, raw_number, e164) "
                           "VALUES ($1, 'gone', 0, $2, $2)", bid, N1)
    assert "gone" not in settings.targets
    async with pool.acquire() as finalising:
        tx = finalising.transaction()
        await tx.start()
        counts = await batches.finalise(finalising, bid, "gone", settings.targets["sales"], clock.now())
        assert counts["accepted"] == 1  # the list was read: N1 was not on it yet
        adding = asyncio.create_task(dnc.add_numbers(pool, [N1], source="api", now=clock.now(),
                                                     targets=settings.targets))
        try:
            await await_for(lambda: adding.done() or _waits_for_lock(pool), 10, "the addition waits")
            assert not adding.done(), "the addition did not wait for the finalise of the removed target"
        finally:
            await tx.commit()
        await adding
    assert await live_on(pool, N1) == 0


async def _waits_for_lock(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as probe:
        return bool(await probe.fetchval("SELECT count(*) > 0 FROM pg_stat_activity "
                                         "WHERE wait_event_type = 'Lock' AND datname = current_database()"))
