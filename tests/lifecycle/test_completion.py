"""A batch is done as soon as its last call ends, whatever ended it (SPEC §6), and a
cancel reaches later attempts; every ending is counted once in the outcome metrics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from dialer import metrics
from dialer.clock import FakeClock, SystemClock
from dialer.dispatch import outbox
from dialer.jobs import Jobs
from dialer.lifecycle import moves, payload
from dialer.store.queries import Q
from tests.dispatch.test_dispatch import TARGETS, numbers
from tests.stack import SandboxConfig, running_stack


@pytest.fixture
def counted() -> Iterator[metrics.Metrics]:
    m = metrics.Metrics(["sales", "other"])
    metrics.install(m)
    try:
        yield m
    finally:
        metrics._current = None


def outcome(m: metrics.Metrics, target: str, name: str) -> float:
    return m.registry.get_sample_value("dialer_call_outcomes_total", {"target": target, "outcome": name}) or 0.0


async def batch_row(pool: asyncpg.Pool, batch_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT state, ended_at FROM batches WHERE id = $1::uuid", batch_id)


async def test_a_batch_ended_by_provider_rejection_is_done(pool: asyncpg.Pool, make_settings: Any,
                                                          counted: metrics.Metrics) -> None:
    targets = {"sales": {**TARGETS["sales"], "agents": ["alice", "zed"]}}  # zed is unknown to Ryng
    async with running_stack(pool, make_settings, targets=targets) as st:
        bid = await st.post(numbers(3))
        await st.dispatcher.tick()
        assert await st.states() == {"rejected_by_provider": 3}
        await st.completion.check()
        b = await batch_row(pool, bid)
    assert b["state"] == "done" and b["ended_at"] is not None
    assert outcome(counted, "sales", "rejected_by_provider") == 3  # once, not twice


async def test_a_batch_whose_every_row_was_rejected_at_intake_is_done(pool: asyncpg.Pool,
                                                                     make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        bid = await st.post(["12345", "not a number"])
        await st.completion.check()  # the first check sweeps every open batch
        assert (await batch_row(pool, bid))["state"] == "done"


async def test_a_cancelled_batch_ends_and_its_later_attempts_are_cancelled(pool: asyncpg.Pool,
                                                                           make_settings: Any,
                                                                           counted: metrics.Metrics) -> None:
    target = {**TARGETS["sales"], "recycle": {"no_answer": {"after_min": 1, "max": 2}}}
    async with running_stack(pool, make_settings, targets={"sales": target}) as st:
        bid = await st.post(numbers(3))
        await st.dispatcher.fill_all()  # all three recorded in a chunk (submitting)
        async with pool.acquire() as conn:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM calls ORDER BY id")]
            chunk = await conn.fetchval("SELECT chunk_id FROM calls WHERE id = $1", ids[0])
            await conn.execute("UPDATE chunks SET state = 'sent' WHERE id = $1", chunk)
            await conn.execute("UPDATE calls SET state = 'queued' WHERE id = ANY($1)", ids)
            async with conn.transaction():
                ended = await moves.cancel_batch(conn, bid, SystemClock().now(), "api")
        assert ended == []  # nothing was waiting: the calls are out at the provider
        # one ends unanswered: its re-dial rule must not create an attempt for a cancelled batch
        cb = payload.read({"customField10": f"dl{ids[0]}", "event": "terminated", "disposition": "NO_ANSWER"})
        await st.service.store(chunk, "terminal", cb)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM calls") == 3  # no new attempt
            # a later attempt made before the cancel was seen (another instance) is caught too
            await conn.execute("INSERT INTO calls (batch_id, target, line, lead_id, attempt, e164, state) "
                               "SELECT batch_id, target, line, id, 2, e164, 'retry_wait' FROM calls WHERE id = $1",
                               ids[0])
        for i in ids[1:]:
            cb = payload.read({"customField10": f"dl{i}", "event": "terminated", "disposition": "ANSWERED"})
            await st.service.store(chunk, "terminal", cb)
        st.completion.touch(__import__("uuid").UUID(bid))
        await st.completion.check()
        b = await batch_row(pool, bid)
        assert b["state"] == "done" and b["ended_at"] is not None
        assert (await st.states()).get("retry_wait", 0) == 0
    assert outcome(counted, "sales", "cancelled") == 1


async def test_stale_calls_at_the_provider_expire_whatever_their_live_state(pool: asyncpg.Pool,
                                                                            make_settings: Any,
                                                                            counted: metrics.Metrics) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, stale_after_h=1) as st:
        bid = await st.post(numbers(3))
        async with pool.acquire() as conn:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM calls ORDER BY id")]
            for i, state in zip(ids, ("queued", "assigned", "connected"), strict=True):
                await conn.execute("UPDATE calls SET state = $2, updated_at = $3 WHERE id = $1", i, state,
                                   clock.now())
        jobs = Jobs(pool, st.settings, clock, "test-1")
        clock.advance(3601)
        await jobs.reaper()
        assert await st.states() == {"expired": 3}
        await st.completion.check()
        assert (await batch_row(pool, bid))["state"] == "done"
    assert outcome(counted, "sales", "expired") == 3


async def test_a_progress_callback_does_not_restart_the_stale_clock(pool: asyncpg.Pool,
                                                                   make_settings: Any) -> None:
    """SPEC §5: live with no *terminal* callback for stale_after_h since it was handed over."""
    clock = FakeClock(SystemClock().now())
    quiet = SandboxConfig(time_scale=1, seed=3, ring_s=(3600, 3600), talk_s=(3600, 3600))  # no terminal one
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, stale_after_h=1,
                             sandbox_config=quiet) as st:
        await st.post(numbers(2))
        await st.dispatcher.tick()  # handed to the sandbox: queued, submitted now
        async with pool.acquire() as conn:
            # queued, or assigned already: the sandbox's connect callback names the agent at
            # once (a progress callback, which must not restart the clock either)
            ids = [r["id"] for r in await conn.fetch(
                "SELECT id FROM calls WHERE state IN ('queued', 'assigned') ORDER BY id")]
            assert len(ids) == 2
            clock.advance(3000)
            # a connect callback 50 min later moves the first one on (and touches updated_at)
            await conn.execute("UPDATE calls SET state = 'connected', updated_at = $2 WHERE id = $1",
                               ids[0], clock.now())
        clock.advance(601)  # 60 min and a second after the hand-over
        await Jobs(pool, st.settings, clock, "test-1").reaper()
        async with pool.acquire() as conn:
            states = [r["state"] for r in await conn.fetch("SELECT state FROM calls ORDER BY id")]
        assert states == ["expired", "expired"]


async def test_uncertain_calls_of_a_cancelled_batch_are_cancelled_not_requeued(pool: asyncpg.Pool,
                                                                               make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        bid = await st.post(numbers(2))
        await st.dispatcher.fill_all()
        now = SystemClock().now()
        async with pool.acquire() as conn:
            await conn.fetchrow(Q.chunk_claim, "dead-instance", now)
            await outbox.orphaned_to_uncertain(conn, now, stale_s=20)
            async with conn.transaction():
                await moves.cancel_batch(conn, bid, now, "api")
            again, failed, ended = await outbox.requeue_uncertain(conn, now + timedelta(minutes=31), 30)
        assert (again, failed, {e.outcome for e in ended}) == (0, 0, {"cancelled"})
        await st.completion.check()
        assert (await batch_row(pool, bid))["ended_at"] is not None


async def test_dnc_disposition_cancels_are_counted_once_under_their_own_target(
        pool: asyncpg.Pool, make_settings: Any, counted: metrics.Metrics) -> None:
    targets = {"sales": TARGETS["sales"], "other": {**TARGETS["sales"], "queue_id": "43"}}
    async with running_stack(pool, make_settings, targets=targets) as st:
        n = numbers(1)[0]
        await st.post([n])
        await st.post([n], target="other")  # the same number waits in another target
        async with pool.acquire() as conn:
            await conn.execute("UPDATE target_state SET paused = true")
            await conn.execute(Q.target_pause, "other", True, "test", SystemClock().now())
        await st.dispatcher.fill_all()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT id, chunk_id FROM calls WHERE target = 'sales'")
        cb = payload.read({"customField10": f"dl{row['id']}", "event": "terminated", "disposition": "DNC"})
        await st.service.store(row["chunk_id"], "terminal", cb)
    assert outcome(counted, "other", "cancelled") == 1
    assert outcome(counted, "sales", "cancelled") == 0


async def test_the_stale_clock_starts_when_the_chunk_is_sent_not_when_it_was_claimed(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """A chunk held long after its claim (a breaker, the rate budget, a stopped daemon) is
    live at the provider from its send on: not expired at the next sweep."""
    clock = FakeClock(SystemClock().now())
    quiet = SandboxConfig(time_scale=1, seed=3, ring_s=(3600, 3600), talk_s=(3600, 3600))  # no terminal one
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, stale_after_h=1,
                             sandbox_config=quiet) as st:
        await st.post(numbers(2))
        await st.dispatcher.fill_all()  # claimed: recorded, submitted_at now
        clock.advance(2 * 3600)  # held two hours before it goes
        await st.dispatcher.send_all()

        async def live() -> bool:  # queued, or assigned once the sandbox's connect callback came
            states = await st.states()
            return sum(states.values()) == 2 and set(states) <= {"queued", "assigned"}

        assert await live()
        await Jobs(pool, st.settings, clock, "test-1").reaper()
        assert await live()
        clock.advance(3601)
        await Jobs(pool, st.settings, clock, "test-1").reaper()
        assert await st.states() == {"expired": 2}
