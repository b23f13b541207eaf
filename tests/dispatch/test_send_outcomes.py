"""Send outcomes, proof of life and the re-check at send time (SPEC §5), in process
against the sandbox over HTTP and a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from dialer.clock import FakeClock, SystemClock
from dialer.dispatch import outbox
from dialer.lifecycle.states import TERMINAL
from dialer.store.queries import Q
from tests.conftest import await_for
from tests.dispatch.test_dispatch import TARGETS, numbers
from tests.stack import running_stack


async def _ended(st: Any, n: int) -> bool:
    await st.dispatcher.tick()
    states = await st.states()
    return sum(v for k, v in states.items() if k in TERMINAL) == n


async def test_a_5xx_after_the_provider_took_the_chunk_never_dials_twice(pool: asyncpg.Pool,
                                                                         make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        # every request is taken, then answered 500/502/504
        st.sandbox.configure(accept_then_fail_rate=1.0, accept_then_fail_mode="5xx")
        await st.post(numbers(12))
        await await_for(lambda: _ended(st, 12), 60, "the callbacks to end every call")
        assert set(st.sandbox.dials_by_number().values()) == {1}
        assert set(st.sandbox.submissions_by_ref("customField10").values()) == {1}
        async with pool.acquire() as conn:
            chunks = await conn.fetch("SELECT state, http_status, attempts, error FROM chunks")
        # each chunk went out once; a callback proved it taken
        assert {c["http_status"] for c in chunks} <= {500, 502, 504}
        assert {(c["state"], c["attempts"]) for c in chunks} == {("sent", 1)}
        assert all("proved taken by a callback" in (c["error"] or "") for c in chunks)


async def test_a_late_2xx_after_the_orphan_check_is_still_applied(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS) as st:
        await st.post(numbers(4))
        await st.dispatcher.fill_all()
        async with pool.acquire() as conn:
            row = await conn.fetchrow(Q.chunk_claim, "test-1", clock.now())
            c = outbox.Claimed(row["id"], row["target"], row["token"], dict(row["request"]), row["kind"],
                               row["attempts"], row["rows"], row["created_at"])
            # our heartbeat looked stale to another instance while the request was in flight
            assert await outbox.orphaned_to_uncertain(conn, clock.now() + timedelta(seconds=60), 20) == [c.id]
        result = await st.dispatcher._post(c)
        assert result.kind == "ok"
        await st.dispatcher._settle(c, result)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT state FROM chunks WHERE id = $1", c.id) == "sent"
            # nothing is left to re-queue: the calls were moved on by the answer
            assert await conn.fetchval("SELECT count(*) FROM calls WHERE state = 'uncertain'") == 0
            again, failed, _ = await outbox.requeue_uncertain(conn, clock.now() + timedelta(hours=1), 30)
        assert (again, failed) == (0, 0)
        await await_for(lambda: _ended(st, 4), 30, "every call ended")
        assert set(st.sandbox.dials_by_number().values()) == {1}


async def _uncertain_chunk(st: Any, pool: asyncpg.Pool, now: Any) -> tuple[int, list[int]]:
    """A chunk a dead instance claimed and (maybe) sent: its calls wait as uncertain."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(Q.chunk_claim, "dead-instance", now)
        await outbox.orphaned_to_uncertain(conn, now, stale_s=20)
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM calls WHERE chunk_id = $1 ORDER BY id",
                                                 row["id"])]
    return int(row["id"]), ids


async def _callback(st: Any, chunk_id: int, call_id: int, kind: str = "connect", **body: Any) -> None:
    from dialer.lifecycle import payload

    cb = payload.read({"customField10": f"dl{call_id}", "event": "agent_assigned", "agent": "alice", **body})
    await st.service.store(chunk_id, kind, cb)


async def test_one_callback_proves_the_whole_uncertain_chunk(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(4))
        await st.dispatcher.fill_all()
        chunk_id, ids = await _uncertain_chunk(st, pool, SystemClock().now())
        await _callback(st, chunk_id, ids[0])
        async with pool.acquire() as conn:
            states = {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM calls")}
            chunk = await conn.fetchrow("SELECT state, error FROM chunks WHERE id = $1", chunk_id)
            proof = await conn.fetchval("SELECT count(*) FROM call_events WHERE kind = 'submitted' "
                                        "AND payload->>'proof' LIKE 'proved taken%'")
        assert states[ids[0]] == "assigned"
        assert all(states[i] == "queued" for i in ids[1:])
        assert chunk["state"] == "sent" and "was uncertain" in chunk["error"]
        assert proof == len(ids) - 1


async def test_a_requeued_call_is_still_matched_by_its_earlier_send(pool: asyncpg.Pool,
                                                                   make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(4))
        await st.dispatcher.fill_all()
        now = SystemClock().now()
        chunk_id, ids = await _uncertain_chunk(st, pool, now)
        async with pool.acquire() as conn:
            assert await outbox.requeue_uncertain(conn, now + timedelta(minutes=31), 30) == (4, 0, [])
            assert await conn.fetchval("SELECT count(*) FROM calls WHERE chunk_id IS NULL") == 4
        # the original send was taken after all: its terminal callback still finds the call
        await _callback(st, chunk_id, ids[1], kind="terminal", event="terminated", disposition="ANSWERED")
        async with pool.acquire() as conn:
            states = {r["id"]: r["state"] for r in await conn.fetch("SELECT id, state FROM calls")}
            chunk_state = await conn.fetchval("SELECT state FROM chunks WHERE id = $1", chunk_id)
        assert states[ids[1]] == "answered"
        # and it proves the whole earlier send: the siblings are not dialed again
        assert [states[i] for i in ids if i != ids[1]] == ["queued"] * 3
        assert chunk_state == "sent"


async def test_rows_are_rechecked_just_before_a_delayed_send(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    targets = {"sales": {**TARGETS["sales"], "chunk_size": 6, "calls_per_agent": 4},
               "other": {**TARGETS["sales"], "queue_id": "43", "chunk_size": 6}}
    async with running_stack(pool, make_settings, clock=clock, targets=targets) as st:
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=30)
        nums = numbers(6)
        await st.post(nums)
        other_batch = await st.post(numbers(3, start=2100000), target="other")
        await st.dispatcher.tick()  # recorded, then 429 with Retry-After: the chunks wait
        async with pool.acquire() as conn:
            assert set(await conn.fetchval("SELECT array_agg(DISTINCT state) FROM chunks")) == {"recorded"}
            # meanwhile: two numbers are put on the DNC list and the other batch is cancelled
            await conn.execute(Q.dnc_add, nums[:2], "api", clock.now(), None)
        async with st.completion.pool.acquire() as conn, conn.transaction():
            from dialer.lifecycle import moves

            await moves.cancel_batch(conn, other_batch, clock.now(), "api")
        st.sandbox.configure(throttle_rate=0.0)
        clock.advance(31)
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            ref = {r["e164"]: f"dl{r['id']}" for r in await conn.fetch("SELECT id, e164 FROM calls")}
        sent = st.sandbox.submissions_by_ref("customField10")
        assert not {ref[n] for n in nums[:2]} & set(sent), "a number put on the DNC list was sent"
        assert not {ref[n] for n in numbers(3, start=2100000)} & set(sent), "a cancelled batch was sent"
        assert {ref[n] for n in nums[2:]} == set(sent)
        async with pool.acquire() as conn:
            rules = [r["rule"] for r in await conn.fetch(
                "SELECT payload->>'rule' AS rule FROM call_events WHERE payload->>'at' = 'send' ORDER BY id")]
            chunks = {r["target"]: r["state"] for r in await conn.fetch("SELECT target, state FROM chunks")}
        assert sorted(rules) == ["batch_cancelled"] * 3 + ["dnc"] * 2
        assert chunks == {"sales": "sent", "other": "withdrawn"}  # the emptied chunk was never sent
        async with pool.acquire() as conn:
            attempts = {r["e164"]: r["submitted_at"] is not None
                        for r in await conn.fetch("SELECT e164, submitted_at FROM calls")}
        # what was taken out was never sent: no attempt for the caps, the counts, the dedupe
        assert {n for n, sent in attempts.items() if not sent} == set(nums[:2]) | set(numbers(3, start=2100000))


async def test_a_call_ended_at_send_after_an_uncertain_send_still_counts_as_an_attempt(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS) as st:
        nums = numbers(4)
        await st.post(nums)
        await st.dispatcher.fill_all()
        await _uncertain_chunk(st, pool, clock.now())
        async with pool.acquire() as conn:
            # the earlier send's outcome stays unknown: it may have dialed
            assert (await outbox.requeue_uncertain(conn, clock.now(), 0))[0] == 4
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=30)
        await st.dispatcher.tick()  # recorded again, then 429: the chunk waits
        async with pool.acquire() as conn:
            await conn.execute(Q.dnc_add, nums[:1], "api", clock.now(), None)
        st.sandbox.configure(throttle_rate=0.0)
        clock.advance(31)
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT state, submitted_at FROM calls WHERE e164 = $1", nums[0])
        assert row["state"] == "cancelled" and row["submitted_at"] is not None


async def test_a_pause_during_a_backoff_keeps_the_chunk_from_going_out(pool: asyncpg.Pool,
                                                                      make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS) as st:
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=30)
        await st.post(numbers(4))
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            await conn.execute(Q.target_pause, "sales", True, "test", clock.now())
        st.sandbox.configure(throttle_rate=0.0)
        clock.advance(31)
        await st.dispatcher.tick()
        assert st.sandbox.dials_by_number() == {}
        assert await st.states() == {"pending": 4}  # back to waiting, for when it resumes
        async with pool.acquire() as conn:
            holds = await conn.fetchval("SELECT count(*) FROM call_events WHERE kind = 'hold' "
                                        "AND payload->>'rule' = 'paused'")
            # every hold names until when (SPEC §9): here, no time but the resume
            untils = await conn.fetch("SELECT payload ? 'until' AS u, payload->>'until_what' AS w "
                                      "FROM call_events WHERE kind = 'hold'")
            await conn.execute(Q.target_pause, "sales", False, None, clock.now())
        assert holds == 4
        assert {(r["u"], r["w"]) for r in untils} == {(True, "the target is resumed")}
        await await_for(lambda: _ended(st, 4), 30, "every call ended after the resume")
        assert set(st.sandbox.dials_by_number().values()) == {1}
