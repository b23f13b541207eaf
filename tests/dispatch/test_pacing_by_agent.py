"""Pacing by agent (a ``global`` agent list): each call is directed to an agent with room,
an agent whose wrap-up ends gets the next call, and the loop wakes when it ends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.dispatch.pacing import round_robin_room
from dialer.lifecycle.payload import CallbackData
from dialer.lifecycle.states import TERMINAL
from tests.conftest import await_for
from tests.dispatch.test_dispatch import numbers
from tests.stack import running_stack

AGENTS = ["alice", "bob", "carol"]
TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": AGENTS, "calling_hours": "00:00-24:00",
          "calls_per_agent": 1, "chunk_size": 50, "max_dispose_s": 30}


async def _in_flight(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT id, chunk_id, offered_to FROM calls "
                                "WHERE state IN ('submitting', 'uncertain', 'queued', 'assigned', 'connected') "
                                "ORDER BY id")


async def test_each_call_goes_to_an_agent_with_room_and_the_agent_out_of_wrapup_gets_the_next(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock()
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0)  # the sandbox must not answer on its own here
        await st.post(numbers(10))
        await st.dispatcher.fill_all()
        sent = await _in_flight(pool)
        assert sorted(c["offered_to"] for c in sent) == AGENTS  # one each, nobody twice
        pace = st.dispatcher.paces["sales"]
        assert pace.takers == [] and pace.free == 0 and pace.next_ready_at is None

        # bob ends his call: he is in wrap-up for 30 s, alice and carol are on theirs
        bobs = next(c for c in sent if c["offered_to"] == "bob")
        await st.service.store(bobs["chunk_id"], "terminal",
                               CallbackData(raw={}, disposition="ANSWERED", agent="bob", refs=[bobs["id"]]))
        ended_at = clock.now()
        await st.dispatcher.fill_all()
        pace = st.dispatcher.paces["sales"]
        assert pace.free == 0 and pace.wrapup_agents == 1 and len(await _in_flight(pool)) == 2
        assert pace.next_ready_at == ended_at + timedelta(seconds=30)
        # the loop's next wake-up: the interval while the wrap-up is further away, then its end
        assert st.dispatcher.next_due_s(1.0) == 1.0
        clock.advance(29.5)
        assert 0.5 <= st.dispatcher.next_due_s(1.0) <= 0.51

        clock.advance(0.6)  # bob's wrap-up is over: the next call is his, not the next in a rotation
        await st.dispatcher.fill_all()
        now_sent = await _in_flight(pool)
        new = [c for c in now_sent if c["id"] not in {s["id"] for s in sent}]
        assert [c["offered_to"] for c in new] == ["bob"]
        assert st.dispatcher.paces["sales"].free == 0


async def test_a_call_taken_by_another_agent_counts_against_that_agent(pool: asyncpg.Pool,
                                                                      make_settings: Any) -> None:
    clock = FakeClock()
    async with running_stack(pool, make_settings, clock=clock,
                             targets={"sales": {**TARGET, "calls_per_agent": 2}}) as st:
        st.sandbox.configure(time_scale=1000.0)
        await st.post(numbers(10))
        await st.dispatcher.fill_all()
        sent = await _in_flight(pool)
        assert sorted(c["offered_to"] for c in sent) == sorted(AGENTS * 2)
        # one of alice's calls ends, but the callback says carol took it: carol has room
        alices = next(c for c in sent if c["offered_to"] == "alice")
        await st.service.store(alices["chunk_id"], "terminal",
                               CallbackData(raw={}, disposition="ANSWERED", agent="carol", refs=[alices["id"]]))
        clock.advance(31)
        await st.dispatcher.fill_all()
        new = [c for c in await _in_flight(pool) if c["id"] not in {s["id"] for s in sent}]
        assert [c["offered_to"] for c in new] == ["alice"]


async def test_the_loop_wakes_when_a_wrapup_ends_not_at_its_interval(pool: asyncpg.Pool,
                                                                     make_settings: Any) -> None:
    """One agent, a wrap-up after every call: the terminal callback that wakes the loop
    finds the agent in wrap-up, so nothing but the end of that wrap-up can start the next
    call before the hour-long interval."""
    target = {**TARGET, "agents": ["alice"], "max_dispose_s": 1}
    async with running_stack(pool, make_settings, targets={"sales": target}) as st:
        await st.post(numbers(3))
        async with anyio.create_task_group() as tg:
            tg.start_soon(st.dispatcher.run, 3600.0)

            async def all_ended() -> bool:
                return sum(n for s, n in (await st.states()).items() if s in TERMINAL) == 3

            await await_for(all_ended, 30, "three calls, one after the other's wrap-up")
            st.dispatcher.running = False
            st.dispatcher.wake()
        async with pool.acquire() as conn:
            agents = await conn.fetch("SELECT DISTINCT offered_to FROM calls")
        assert [r["offered_to"] for r in agents] == ["alice"]


def test_a_request_never_deals_an_agent_more_calls_than_its_room() -> None:
    assert round_robin_room([]) == 0
    assert round_robin_room([1, 1, 1]) == 3
    assert round_robin_room([2, 1, 1]) == 4  # a b c a
    assert round_robin_room([3, 1]) == 3  # a b a, then b would get a second
    assert round_robin_room([2, 2]) == 4


class _EndsACallBefore:
    """A connection whose ``k``-th statement (0: the first) runs just after another
    connection commits a terminal callback: what a callback arriving in the middle of
    pacing's reads looks like under READ COMMITTED."""

    def __init__(self, conn: asyncpg.Connection, k: int, end: Any) -> None:
        self._conn, self._k, self._end, self.statements = conn, k, end, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute"):
            return attr

        async def run(*args: Any, **kwargs: Any) -> Any:
            if self.statements == self._k:
                await self._end()
            self.statements += 1
            return await attr(*args, **kwargs)
        return run


async def test_a_callback_committing_while_pacing_reads_never_offers_its_agent_a_call(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """Read in two statements, a terminal callback committing in between showed its agent
    off the call yet not in wrap-up: pacing directed a call to an agent wrapping up, and
    that call, counted in flight, kept a free agent waiting (seconds, in bench/pacing.py)."""
    from dialer.dispatch.pacing import measure

    agents = [f"agent{i}" for i in range(4)]
    clock = FakeClock()
    target = {**TARGET, "agents": agents}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        st.sandbox.configure(time_scale=1000.0)
        await st.post(numbers(10))
        await st.dispatcher.fill_all()
        sent = {c["offered_to"]: c for c in await _in_flight(pool)}
        assert sorted(sent) == agents
        during = 0  # reads the callback landed in the middle of (before their last statement)
        for k, agent in enumerate(agents):  # the callback lands before statement k of the read
            call = sent[agent]

            async def end(agent: str = agent, call: asyncpg.Record = call) -> None:
                await st.service.store(call["chunk_id"], "terminal",
                                       CallbackData(raw={}, disposition="ANSWERED", agent=agent,
                                                    refs=[call["id"]]))

            async with pool.acquire() as raw, raw.transaction():
                conn = _EndsACallBefore(raw, k, end)
                pace = await measure(conn, "sales", st.settings.targets["sales"],  # type: ignore[arg-type]
                                     st.dispatcher.agents, clock.now())
            if conn.statements <= k:
                await end()  # the read was over before: the callback comes after it
            else:
                during += 1
            assert agent not in (pace.takers or []), (k, pace)
            assert pace.free == 0, (k, pace)
        assert during >= 1  # one statement now, so only k=0; two before, and k=1 failed


async def _singles(st: Any, n: int, start: int) -> list[str]:
    """``n`` one-lead batches sent one after another, no callback in between: the agent
    the provider gave each."""
    got: list[str] = []
    for k in range(n):
        number = numbers(1, start=start + k)[0]
        await st.post([number])
        await st.dispatcher.tick()
        got += [c["agent"] for c in st.sandbox.calls() if c["number"] == number]
    return got


@pytest.mark.parametrize("kind", ["campaign", "queue"])
async def test_single_lead_requests_alternate_among_the_agents_with_room(pool: asyncpg.Pool,
                                                                         make_settings: Any, kind: str) -> None:
    """SPEC §5, round-robin across campaigns: the rotation goes through the agents in a
    stable order. Over the agents ordered by room it landed on a list that changed order
    with every call (alice, alice, bob, alice)."""
    target = {**TARGET, "kind": kind, "agents": ["alice", "bob"], "calls_per_agent": 5, "max_dispose_s": 0}
    async with running_stack(pool, make_settings, targets={"sales": target}) as st:
        st.sandbox.configure(time_scale=1000.0)  # no callback frees anyone in between
        assert await _singles(st, 4, 2000000) == ["alice", "bob", "alice", "bob"]


async def test_the_rotation_skips_only_the_agent_without_room(pool: asyncpg.Pool, make_settings: Any) -> None:
    target = {**TARGET, "kind": "campaign", "calls_per_agent": 5, "max_dispose_s": 0}
    async with running_stack(pool, make_settings, targets={"sales": target}) as st:
        st.sandbox.configure(time_scale=1000.0)
        await st.post(numbers(15))
        await st.dispatcher.tick()  # five each
        sent = await _in_flight(pool)
        assert sorted(c["offered_to"] for c in sent) == sorted(AGENTS * 5)
        for c in sent:  # alice's and carol's calls end; bob keeps his five
            if c["offered_to"] != "bob":
                await st.service.store(c["chunk_id"], "terminal", CallbackData(
                    raw={}, disposition="ANSWERED", agent=c["offered_to"], refs=[c["id"]]))
        assert await _singles(st, 4, 2100000) == ["alice", "carol", "alice", "carol"]
        bobs = next(c for c in sent if c["offered_to"] == "bob")
        await st.service.store(bobs["chunk_id"], "terminal", CallbackData(
            raw={}, disposition="ANSWERED", agent="bob", refs=[bobs["id"]]))
        assert await _singles(st, 3, 2200000) == ["alice", "bob", "carol"]  # room again: his turn again
