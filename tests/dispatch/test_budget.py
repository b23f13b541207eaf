"""The provider call-rate budget (SPEC §10): the window rule, AIMD, the shared row on a real
PostgreSQL with a FakeClock, and a 429 with Retry-After from the sandbox."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from dialer.clock import FakeClock, SystemClock
from dialer.config import RyngLimits
from dialer.dispatch.budget import Aimd, Counted, Limit, RateBudget, wait_s
from dialer.lifecycle.states import TERMINAL
from tests.conftest import await_for
from tests.dispatch.test_dispatch import TARGETS, numbers
from tests.stack import running_stack


def most_in_any_window(events: list[tuple[float, int]], window: float = 1.0) -> int:
    """The most units inside any half-open window [t, t + window) of (time, units)."""
    events = sorted(events)
    return max((sum(u for s, u in events if t <= s < t + window) for t, _ in events), default=0)


def test_limits_per_second() -> None:
    assert Limit.per_second(5) == Limit(5, 1.0)
    assert Limit.per_second(2.5) == Limit(2, 1.0)  # never above: 2 a second
    assert Limit.per_second(0.5) == Limit(1, 2.0)  # one every two seconds


def test_a_send_counts_until_a_window_after_it_finished() -> None:
    clock = FakeClock()
    now = clock.now()
    five = Limit(5, 1.0)
    done = [Counted(now - timedelta(seconds=0.5), now - timedelta(seconds=0.4), 3)]
    assert wait_s(done, now, 2, five, None, 1.0) == 0  # 3 + 2 fit
    assert wait_s(done, now, 3, five, None, 1.0) == 0.6  # 3 + 3 do not: until 0.4 + 1 s
    # an unfinished request counts as if it finished now: the wait is a full window, re-polled
    out = [Counted(now - timedelta(seconds=5), None, 5)]
    assert wait_s(out, now, 1, five, None, 1.0) == 1.0
    # at half the rate the window doubles
    assert wait_s(done, now, 3, five, None, 0.5) == 1.6
    # a chunk bigger than the budget goes alone in an empty window
    assert wait_s([], now, 50, five, None, 1.0) == 0
    assert wait_s(done, now, 50, five, None, 1.0) == 0.6
    # requests have their own limit; a Retry-After hold comes first
    one_req = Limit(1, 1.0)
    assert wait_s(done, now, 1, None, one_req, 1.0) == 0.6
    assert wait_s([], now, 1, five, None, 1.0, blocked_until=now + timedelta(seconds=3)) == 3


def test_aimd_halves_once_per_window_and_recovers_linearly() -> None:
    clock = FakeClock()
    t0 = clock.now()
    a, lowered = Aimd().lowered(t0, recover_s=60, window_s=1.0, retry_after_s=2)
    assert lowered and a.factor == 0.5 and a.blocked_until == t0 + timedelta(seconds=2)
    # a burst of 429s from sends already out counts once (within the stretched window: 2 s)
    b, lowered = a.lowered(t0 + timedelta(seconds=1.5), 60, 1.0, None)
    assert not lowered and b.factor == 0.5
    c, lowered = b.lowered(t0 + timedelta(seconds=2.5), 60, 1.0, None)
    assert lowered and round(c.factor, 4) == round((0.5 + 2.5 / 60) / 2, 4)
    # additive recovery: +1/60 of the budget a second, capped at the full rate
    assert round(c.factor_at(c.changed_at + timedelta(seconds=30), 60), 4) == round(c.factor + 0.5, 4)  # type: ignore[operator]
    assert c.factor_at(t0 + timedelta(hours=1), 60) == 1.0
    # never below the floor
    d = Aimd(0.06, t0)
    assert d.lowered(t0 + timedelta(seconds=100), 1e9, 1.0, None)[0].factor == 0.05


async def test_two_instances_sharing_the_row_never_exceed_the_budget(pool: asyncpg.Pool) -> None:
    """Two budgets (two instances) on one database and one FakeClock: chunks of 1..5 calls,
    each request taking 0.2 s; the calls' reservations never put more than 5 in a second."""
    clock = FakeClock()
    start = clock.now()

    async def tick(seconds: float) -> None:
        clock.advance(max(seconds, 0.01))

    limits = RyngLimits(max_calls_per_s=5)
    a = RateBudget(pool, clock, limits, sleep=tick)
    b = RateBudget(pool, clock, limits, sleep=tick)
    sent: list[tuple[float, int]] = []
    sizes = [5, 1, 2, 3, 4, 5, 5, 1, 1, 1, 2, 4, 3, 5, 2] * 4
    for i, n in enumerate(sizes):
        budget = (a, b)[i % 2]
        r = await budget.acquire(n, chunk_id=i)
        assert r is not None
        sent.append(((clock.now() - start).total_seconds(), n))
        clock.advance(0.2)  # the request's round trip
        await budget.finish(r, 200)
    assert most_in_any_window(sent) <= 5
    total = sum(sizes)
    elapsed = sent[-1][0]
    # and it is a budget, not a brake: close to 5 calls a second (less the request time)
    assert total / (elapsed + 1) > 3.0, (total, elapsed)
    assert a.max_chunk(500) == 5


async def test_a_429_lowers_the_shared_rate_and_holds_for_retry_after(pool: asyncpg.Pool,
                                                                      make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    providers = {"ryng": {"max_calls_per_s": 5, "rate_recover_s": 30}}
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, providers=providers) as st:
        d = st.dispatcher

        async def tick(seconds: float) -> None:
            clock.advance(max(seconds, 0.01))

        d.budget._sleep = tick
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=3)
        await st.post(numbers(8))
        await d.fill_all()
        assert await d.send_one()  # answered 429 with Retry-After: 3
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM rate_budget WHERE provider = 'ryng'")
            events = await conn.fetch("SELECT payload FROM call_events WHERE kind = 'rate_budget_lowered'")
            chunks = await conn.fetch("SELECT rows FROM chunks")
        assert row["factor"] == 0.5 and row["lowered_total"] == 1
        assert row["blocked_until"] == clock.now() + timedelta(seconds=3)
        assert len(events) == 1 and events[0]["payload"]["calls_per_s"] == 2.5
        assert max(c["rows"] for c in chunks) <= 5  # chunks split to the budget
        # the metrics show the lowered rate
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{st.settings.base_url}/metrics")).text
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.labels.get("provider") == "ryng" and s.name.startswith("dialer_rate_budget")}
        assert samples["dialer_rate_budget_calls_per_second"] == 2.5
        assert samples["dialer_rate_budget_lowered_total"] == 1
        assert samples["dialer_rate_budget_hold_seconds"] == 3
        # the provider recovers: the next send waits out the Retry-After, then all goes out
        st.sandbox.configure(throttle_rate=0.0)
        waits: list[float] = []
        d.budget.on_wait = waits.append
        before = clock.now()
        clock.advance(0.5)  # the chunk's own retry is due at the same time as the hold ends
        while await d.send_one():
            pass
        assert clock.now() >= before + timedelta(seconds=3)

        async def ended() -> bool:
            await d.tick()
            return sum(v for k, v in (await st.states()).items() if k in TERMINAL) == 8

        await await_for(ended, 30, "every call ended")
        # every send reported its wait (the daemon's metrics observe these)
        assert len(waits) >= 2 and max(waits) >= 2.5  # the rest of the Retry-After hold


async def test_a_long_retry_after_hold_gives_chunks_back_instead_of_holding_them(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    providers = {"ryng": {"max_calls_per_s": 4}}
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, providers=providers) as st:
        d = st.dispatcher
        st.sandbox.configure(throttle_rate=1.0, retry_after_s=60)
        await st.post(numbers(8))
        await d.fill_all()
        assert await d.send_one()  # 429, Retry-After: 60 -> every instance holds its sends
        assert await d.send_one()  # the next chunk is claimed, and given back until the hold ends
        assert not await d.send_one()
        async with pool.acquire() as conn:
            chunks = await conn.fetch("SELECT state, attempts, next_attempt_at FROM chunks ORDER BY id")
        assert [(c["state"], c["attempts"]) for c in chunks] == [("recorded", 1), ("recorded", 0)]
        assert all(c["next_attempt_at"] == clock.now() + timedelta(seconds=60) for c in chunks)
        assert st.sandbox.stats()["requests"]["queue_append"] == {"429": 1}


async def test_a_503_retry_after_holds_every_send_without_lowering_the_rate(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """With a budget the instance's own Retry-After hold is off (the budget holds every
    instance): a 503's Retry-After must reach the budget too, not only a 429's."""
    clock = FakeClock(SystemClock().now())
    providers = {"ryng": {"max_calls_per_s": 4}}
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, providers=providers) as st:
        d = st.dispatcher
        st.sandbox.configure(error_rate=1.0, error_statuses=[503], retry_after_s=60)
        await st.post(numbers(8))
        await d.fill_all()
        assert await d.send_one()  # 503, Retry-After: 60
        st.sandbox.configure(error_rate=0.0)
        assert await d.send_one()  # the next chunk is claimed, and given back until the hold ends
        assert not await d.send_one()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT factor, lowered_total, blocked_until FROM rate_budget")
        assert (row["factor"], row["lowered_total"]) == (1.0, 0)  # unavailable is not "too fast"
        assert row["blocked_until"] == clock.now() + timedelta(seconds=60)
        assert st.sandbox.stats()["requests"]["queue_append"] == {"503": 1}
