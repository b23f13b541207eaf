"""Dispatch against a real sandbox over HTTP: pacing, no double dial, errors, breaker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from dialer.clock import FakeClock, SystemClock
from dialer.lifecycle.states import TERMINAL
from tests.conftest import await_for
from tests.stack import running_stack

TARGETS = {
    "sales": {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
              "calling_hours": "00:00-24:00", "calls_per_agent": 2, "chunk_size": 4, "max_dispose_s": 0},
}


def numbers(n: int, start: int = 2000000) -> list[str]:
    return [f"+1415{start + i:07d}" for i in range(n)]


async def test_calls_flow_to_terminal_states_within_the_pacing_limit(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(30), fields={"name": "x"})
        peak = 0

        async def all_ended() -> bool:
            nonlocal peak
            await st.dispatcher.tick()
            pace = st.dispatcher.paces["sales"]
            peak = max(peak, pace.in_flight)
            assert pace.in_flight <= pace.limit == 6
            states = await st.states()
            return sum(n for s, n in states.items() if s in TERMINAL) == 30

        await await_for(all_ended, 60, "every call ended")
        assert peak == 6
        dials = st.sandbox.submissions_by_ref("customField10")
        assert len(dials) == 30 and set(dials.values()) == {1}


async def test_pacing_limit_holds_through_a_simulated_shift(pool: asyncpg.Pool, make_settings: Any) -> None:
    """An injected clock, callbacks applied by hand: wrap-up keeps an agent busy."""
    clock = FakeClock()
    targets = {"sales": {**TARGETS["sales"], "max_dispose_s": 30, "chunk_size": 50}}
    async with running_stack(pool, make_settings, clock=clock, targets=targets) as st:
        st.sandbox.configure(time_scale=1000.0)  # the sandbox must not answer on its own here
        await st.post(numbers(40))
        await st.dispatcher.fill_all()
        pace = st.dispatcher.paces["sales"]
        assert pace.limit == 6 and pace.in_flight == 6
        from dialer.lifecycle.payload import CallbackData

        async with pool.acquire() as conn:
            queued = await conn.fetch("SELECT id, chunk_id FROM calls WHERE state = 'submitting' ORDER BY id")
        assert len(queued) == 6
        # alice ends a call: she is in wrap-up for 30 s, so one slot frees but her two don't
        first = queued[0]
        await st.service.store(first["chunk_id"], "terminal",
                               CallbackData(raw={}, disposition="ANSWERED", agent="alice", refs=[first["id"]]))
        await st.dispatcher.fill_all()
        pace = st.dispatcher.paces["sales"]
        assert pace.ready_agents == 2 and pace.wrapup_agents == 1 and pace.limit == 4
        assert pace.in_flight == 5  # nothing new: 5 in flight > limit 4
        clock.advance(31)
        await st.dispatcher.fill_all()
        pace = st.dispatcher.paces["sales"]
        assert pace.limit == 6 and pace.in_flight == 6


async def test_two_dispatchers_on_one_database_never_submit_a_call_twice(pool: asyncpg.Pool,
                                                                        make_settings: Any) -> None:
    targets = {"sales": {**TARGETS["sales"], "calls_per_agent": 50, "chunk_size": 7}}
    async with running_stack(pool, make_settings, targets=targets) as st:
        await st.post(numbers(120))
        other = st.another_dispatcher("test-2")
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(st.dispatcher.tick)
            tg.start_soon(other.tick)
        refs = st.sandbox.submissions_by_ref("customField10")
        states = await st.states()
        assert sum(refs.values()) == len(refs) == states.get("queued", 0) + sum(
            n for s, n in states.items() if s not in ("pending", "queued"))
        assert set(refs.values()) == {1}


async def test_crash_after_recording_before_sending_sends_once(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(4))
        await st.dispatcher.fill_all()  # recorded, not sent: then the instance "dies"
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM chunks WHERE state = 'recorded'") == 1
        survivor = st.another_dispatcher("test-2")
        await survivor.send_all()
        refs = st.sandbox.submissions_by_ref("customField10")
        assert len(refs) == 4 and set(refs.values()) == {1}


async def test_crash_between_sending_and_the_answer_goes_uncertain_not_resent(pool: asyncpg.Pool,
                                                                              make_settings: Any) -> None:
    from dialer.dispatch import outbox
    from dialer.store.queries import Q

    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(4))
        await st.dispatcher.fill_all()
        now = SystemClock().now()
        async with pool.acquire() as conn:
            # a dead instance claimed the chunk, and its request went out
            claimed = await conn.fetchrow(Q.chunk_claim, "dead-instance", now)
            await st.dispatcher._post(outbox.Claimed(claimed["id"], claimed["target"], claimed["token"],
                                                     dict(claimed["request"]), claimed["kind"], 1, 4))
            moved = await outbox.orphaned_to_uncertain(conn, now, stale_s=20)
            assert moved == [claimed["id"]]
            assert await conn.fetchval("SELECT state FROM chunks") == "uncertain"
        for _ in range(3):
            await st.dispatcher.tick()  # nothing is resent
        # the sandbox's callbacks prove the calls live and carry them to the end
        await await_for(lambda: _all_terminal(st), 30, "callbacks to end the calls")
        refs = st.sandbox.submissions_by_ref("customField10")
        assert len(refs) == 4 and set(refs.values()) == {1}


async def _all_terminal(st: Any) -> bool:
    states = await st.states()
    return bool(states) and all(s in TERMINAL for s in states)


async def test_uncertain_calls_are_requeued_once_after_the_deadline(pool: asyncpg.Pool, make_settings: Any) -> None:
    from dialer.dispatch import outbox
    from dialer.store.queries import Q

    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        await st.post(numbers(6))
        await st.dispatcher.fill_all()
        now = SystemClock().now()
        async with pool.acquire() as conn:
            # a dead instance claimed the chunk; whether its request went out is unknown and
            # no callback ever proves it
            while await conn.fetchrow(Q.chunk_claim, "dead-instance", now) is not None:
                pass
            await outbox.orphaned_to_uncertain(conn, now, stale_s=20)
            n = (await st.states())["uncertain"]
            assert await st.states() == {"uncertain": n} and n >= 2
            assert await outbox.requeue_uncertain(conn, now + timedelta(minutes=29), 30) == (0, 0, [])
            later = now + timedelta(minutes=31)
            again, failed, ended = await outbox.requeue_uncertain(conn, later, 30)
            assert (again, failed, ended) == (n, 0, [])
            events = await conn.fetch("SELECT kind FROM call_events WHERE kind = 'requeued'")
            assert len(events) == again
            assert (await st.states())["pending"] == 6
            # the re-queued calls remember the chunk they were in
            assert await conn.fetchval("SELECT count(*) FROM calls WHERE prev_chunks IS NOT NULL") == n
            # a second uncertain send of the same calls ends them as failed, not a third try
            await conn.execute("UPDATE calls SET state = 'uncertain', chunk_id = (SELECT min(id) FROM chunks) "
                               "WHERE state = 'pending'")
            again, failed, ended = await outbox.requeue_uncertain(conn, later, 30)
            assert again == 0 and failed >= n and {e.outcome for e in ended} == {"failed"}


async def test_429_honours_retry_after_and_5xx_retries(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS) as st:
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=120)
        await st.post(numbers(2))
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT state, http_status, next_attempt_at, created_at FROM chunks")
        assert row["state"] == "recorded" and row["http_status"] == 429
        assert row["next_attempt_at"] - SystemClock().now() > timedelta(seconds=100)
        assert (await st.states()) == {"submitting": 2}


async def test_4xx_is_rejected_by_provider_with_the_response_kept(pool: asyncpg.Pool, make_settings: Any) -> None:
    targets = {"sales": {**TARGETS["sales"], "agents": ["alice", "zed"]}}  # zed is unknown to Ryng
    async with running_stack(pool, make_settings, targets=targets) as st:
        await st.post(numbers(2))
        await st.dispatcher.tick()
        assert (await st.states()) == {"rejected_by_provider": 2}
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT state, http_status, response FROM chunks")
            ev = await conn.fetchrow("SELECT payload FROM call_events WHERE kind = 'rejected' LIMIT 1")
        assert row["state"] == "rejected" and row["http_status"] == 400
        assert "zed" in str(row["response"]) and ev["payload"]["status"] == 400


async def test_breaker_opens_after_repeated_failures_and_closes_after_a_probe(pool: asyncpg.Pool,
                                                                             make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS) as st:
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=1)  # 429: certainly not taken
        await st.post(numbers(8))
        br = st.dispatcher.breakers["sales"]
        for _ in range(10):
            clock.advance(120)
            await st.dispatcher.tick()
            if br.state == "open":
                break
        assert br.state == "open"
        st.sandbox.configure(throttle_rate=0.0)
        clock.advance(br.cooldown_s + 1)

        async def all_sent() -> bool:
            clock.advance(120)
            await st.dispatcher.tick()  # the first call ends free slots for the last two
            return len(st.sandbox.submissions_by_ref("customField10")) == 8

        await await_for(all_sent, 30, "every lead sent once the breaker closed")
        assert br.state == "closed"
        refs = st.sandbox.submissions_by_ref("customField10")
        assert len(refs) == 8 and set(refs.values()) == {1}


async def test_an_open_breaker_with_no_chunk_left_is_probed_after_its_cool_down(pool: asyncpg.Pool,
                                                                              make_settings: Any) -> None:
    """The breaker opened on sends that all settled (e.g. 5xx after the provider queued
    them): no chunk is left recorded, so nothing but the next fill can probe it."""
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS) as st:
        await st.post(numbers(4))
        br = st.dispatcher.breakers["sales"]
        for _ in range(br.threshold):
            br.failure()
        assert br.state == "open"
        await st.dispatcher.tick()
        assert st.sandbox.submissions_by_ref("customField10") == {}  # cooling down: nothing sent
        clock.advance(br.cooldown_s + 1)

        async def sent() -> bool:
            await st.dispatcher.tick()
            return len(st.sandbox.submissions_by_ref("customField10")) == 4

        await await_for(sent, 30, "the leads sent once the cool-down is over")
        assert br.state == "closed"


@pytest.mark.parametrize("kind", ["campaign", "queue"])
async def test_single_lead_requests_rotate_through_agents(pool: asyncpg.Pool, make_settings: Any, kind: str) -> None:
    targets = {"sales": {"kind": kind, "queue_id": "1", "agent_mapping": "all-agents",
                         "agents": ["alice", "bob", "carol"],
                         "calling_hours": "00:00-24:00", "chunk_size": 1, "calls_per_agent": 10}}
    async with running_stack(pool, make_settings, targets=targets) as st:
        await st.post(numbers(6))
        await st.dispatcher.tick()
        calls = st.sandbox.calls()
        agents = [c["agent"] for c in sorted(calls, key=lambda c: c["number"])]
        assert sorted(agents) == ["alice", "alice", "bob", "bob", "carol", "carol"]


async def test_a_retry_after_holds_every_send_not_only_the_throttled_chunk(pool: asyncpg.Pool,
                                                                          make_settings: Any) -> None:
    """SPEC §5: honouring Retry-After. A 429 says "not before N s" of the API: the other
    recorded chunks (another target's too) wait for it as well, not only the one refused."""
    clock = FakeClock(SystemClock().now())
    targets = {"sales": TARGETS["sales"], "other": {**TARGETS["sales"], "queue_id": "43"}}
    async with running_stack(pool, make_settings, clock=clock, targets=targets) as st:
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=30)
        await st.post(numbers(2))
        await st.dispatcher.tick()  # throttled
        # the other target's chunk is recorded after the 429 (recorded in the same tick, it
        # could go out beside the first, in flight before the answer came)
        await st.post(numbers(2, start=2100000), target="other")
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            posted = await conn.fetchval("SELECT count(*) FROM chunks WHERE http_status = 429")
            held = await conn.fetchval("SELECT count(*) FROM chunks WHERE target = 'other' AND http_status IS NULL")
        assert (posted, held) == (1, 1)  # the first send was throttled; the second was never tried
        st.sandbox.configure(throttle_rate=0.0)
        await st.dispatcher.tick()
        assert st.sandbox.dials_by_number() == {}  # still within the 30 s
        clock.advance(31)
        await st.dispatcher.tick()
        await await_for(lambda: _sent(st, 4), 30, "both chunks sent after the Retry-After")


async def _sent(st: Any, n: int) -> bool:
    return len(st.sandbox.submissions_by_ref("customField10")) == n


async def test_an_inline_chunk_mixing_leads_with_and_without_agents_is_taken(pool: asyncpg.Pool,
                                                                            make_settings: Any) -> None:
    """Under inline mapping Ryng reads every row's agentsAssigned: a lead that names none goes
    to the agents ready now, and the chunk is taken whole (not rejected for that row)."""
    targets = {"sales": {**TARGETS["sales"], "agent_mapping": "inline", "chunk_size": 10, "calls_per_agent": 5}}
    async with running_stack(pool, make_settings, targets=targets) as st:
        nums = numbers(6)
        await st.post(nums[:3])
        await st.post(nums[3:], agents=["bob"])
        await st.dispatcher.tick()
        await await_for(lambda: _sent(st, 6), 30, "every lead sent")
        assert "rejected_by_provider" not in await st.states()
