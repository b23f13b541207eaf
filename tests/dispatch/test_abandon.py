"""The abandon-rate guard of customer-first targets (SPEC §10), driven by the sandbox's
abandons with an injectable clock: slow-down past abandon_slowdown_pct, self-pause at
abandon_max_pct (event, metric, paused_reason), an operator's resume, and no re-dial of an
abandoned lead within abandon_redial_min."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from dialer import metrics
from dialer.clock import FakeClock, SystemClock
from dialer.config import Target
from dialer.dispatch import abandon, waiting
from dialer.dispatch.targets import set_paused
from dialer.http.targets import target_views
from dialer.lifecycle.dispositions import Dispositions
from dialer.lifecycle.states import TERMINAL, State
from tests.conftest import await_for
from tests.stack import SandboxConfig, running_stack

TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0,
          "leg_direction": "customer-first", "abandon_redial_min": 30,
          "recycle": {"abandoned": {"after_min": 1, "max": 1}}}


def test_the_guard_levels() -> None:
    t = Target(queue_id="1")  # 2.5 % / 3 %
    assert abandon.next_level("ok", 0.02, t, False) == "ok"
    assert abandon.next_level("ok", 0.025, t, False) == "ok"  # at it is not past it (SPEC §10)
    assert abandon.next_level("ok", 1 / 40, t, False) == "ok"
    assert abandon.next_level("ok", 0.0251, t, False) == "slowdown"
    assert abandon.next_level("ok", 0.0, t.model_copy(update={"abandon_slowdown_pct": 0.0}), False) == "ok"
    assert abandon.next_level("slowdown", 0.03, t, False) == "paused"
    assert abandon.next_level("paused", 0.04, t, True) == "paused"
    # an operator resumed it: slowed, not paused again while the rate stays up
    assert abandon.next_level("paused", 0.04, t, False) == "overridden"
    assert abandon.next_level("overridden", 0.05, t, False) == "overridden"
    # ... until it fell below the maximum and reached it again
    assert abandon.next_level("overridden", 0.028, t, False) == "slowdown"
    assert abandon.next_level("slowdown", 0.031, t, False) == "paused"
    assert abandon.next_level("slowdown", 0.01, t, False) == "ok"
    assert Dispositions().state_for("abandoned") is State.ABANDONED
    assert State.ABANDONED in TERMINAL


async def _dial(st: Any, numbers: list[str], state: str) -> None:
    await st.post(numbers)

    async def ended() -> bool:
        await st.dispatcher.tick()
        async with st.pool.acquire() as conn:
            return not await conn.fetchval(
                "SELECT count(*) FROM calls WHERE e164 = ANY($1::text[]) AND attempt = 1 AND state <> $2",
                numbers, state)

    await await_for(ended, 60, f"{len(numbers)} calls {state}")


async def _guard(st: Any, clock: FakeClock) -> tuple[str, bool, int, int]:
    """Let the guard look again (its count is cached for CHECK_EVERY_S), and read it."""
    clock.advance(abandon.CHECK_EVERY_S)
    await st.dispatcher.fill_all()
    async with st.pool.acquire() as conn:
        level = await conn.fetchval("SELECT level FROM abandon_guard WHERE target = 'sales'")
        paused = bool(await conn.fetchval("SELECT paused FROM target_state WHERE target = 'sales'"))
    pace = st.dispatcher.paces["sales"]
    return level, paused, pace.limit, pace.ready_agents


async def _metric(st: Any, name: str) -> float:
    metrics.for_context(st.rt.ctx).min_refresh_s = 0  # read the database at every scrape
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{st.settings.base_url}/metrics")).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name and s.labels.get("target") == "sales")


async def test_abandons_slow_the_target_then_pause_it(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    sandbox = SandboxConfig(time_scale=0.001, seed=3, ring_s=(1, 2), talk_s=(5, 10), answer_rate=1,
                            no_answer_rate=0, busy_rate=0, unreachable_rate=0)
    async with running_stack(pool, make_settings, clock=clock, sandbox_config=sandbox,
                             targets={"sales": TARGET}) as st:
        # 100 calls picked up and talked: 0 %
        await _dial(st, [f"+1415300{i:04d}" for i in range(100)], "answered")
        assert await _guard(st, clock) == ("ok", False, 6, 3)
        # now every customer-first call the sandbox answers is abandoned: one at a time
        st.sandbox.configure(abandon_rate=1.0)
        await _dial(st, ["+14155550001"], "abandoned")
        await _dial(st, ["+14155550002"], "abandoned")
        assert (await _guard(st, clock))[:2] == ("ok", False)  # 2 / 102 = 1.96 %
        await _dial(st, ["+14155550003"], "abandoned")
        # 3 / 103 = 2.91 %: one call per ready agent
        assert await _guard(st, clock) == ("slowdown", False, 3, 3)
        assert round(await _metric(st, "dialer_abandon_rate"), 4) == round(3 / 103, 4)
        assert await _metric(st, "dialer_abandon_guard_level") == 1
        # those who measure the pace on their own show the slowed limit, not the full 6
        assert await _metric(st, "dialer_pacing_limit") == 3
        async with pool.acquire() as conn:
            w = await waiting.for_target(conn, "sales", st.settings.targets["sales"], st.dispatcher,
                                         False, clock.now())
        assert w.pace.limit == 3
        assert next(v for v in await target_views(st.rt.ctx) if v.name == "sales").limit == 3
        await _dial(st, ["+14155550004"], "abandoned")
        # 4 / 104 = 3.85 %: the target paused itself
        level, paused, _, _ = await _guard(st, clock)
        assert (level, paused) == ("paused", True)
        assert await _metric(st, "dialer_abandon_guard_level") == 2
        async with pool.acquire() as conn:
            reason = await conn.fetchval("SELECT paused_reason FROM target_state WHERE target = 'sales'")
            events = [(r["kind"], r["payload"]["rate_pct"]) for r in await conn.fetch(
                "SELECT kind, payload FROM call_events WHERE kind LIKE 'abandon_%' ORDER BY id")]
            # no abandoned lead is re-dialed within abandon_redial_min (the rule said 1 min)
            redials = await conn.fetch(
                "SELECT r.not_before, c.ended_at FROM calls r JOIN calls c ON c.id = r.lead_id "
                "WHERE r.attempt = 2")
        assert reason == abandon.BY
        assert events == [("abandon_slowdown", 2.913), ("abandon_paused", 3.846)]
        assert len(redials) == 4
        assert all(r["not_before"] == r["ended_at"] + timedelta(minutes=30) for r in redials)
        # nothing is sent while paused
        await st.post(["+14155550005"])
        await st.dispatcher.tick()
        assert (await st.states()).get("pending") == 1
        # an operator resumes: the guard keeps the slow-down and does not pause it again
        await set_paused(pool, "sales", False, "api", clock.now())
        assert await _guard(st, clock) == ("overridden", False, 3, 3)
        assert await _guard(st, clock) == ("overridden", False, 3, 3)


async def test_an_abandoned_several_number_lead_waits_too_and_only_with_a_rule(pool: asyncpg.Pool,
                                                                               make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    sandbox = SandboxConfig(time_scale=0.001, seed=3, ring_s=(1, 2), talk_s=(5, 10), answer_rate=1,
                            no_answer_rate=0, busy_rate=0, unreachable_rate=0, abandon_rate=1.0)
    no_rule = {**TARGET, "queue_id": "43", "recycle": {}}
    async with running_stack(pool, make_settings, clock=clock, sandbox_config=sandbox,
                             targets={"sales": TARGET, "other": no_rule}) as st:
        await st.post(["+14155550101"], number2="+14155550102")
        await st.post(["+14155550201"], target="other", number2="+14155550202")

        async def ended() -> bool:
            await st.dispatcher.tick()
            return (await st.states()).get("abandoned") == 2

        await await_for(ended, 60, "both first attempts abandoned")
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT r.target, r.e164, r.not_before, c.ended_at FROM calls r JOIN calls c ON c.id = r.lead_id "
                "WHERE r.attempt = 2")
        # the lead's other phone is not dialed at once: abandon_redial_min first; no rule, no re-dial
        assert [(r["target"], r["e164"]) for r in rows] == [("sales", "+14155550102")]
        assert rows[0]["not_before"] == rows[0]["ended_at"] + timedelta(minutes=30)


async def test_a_callback_asked_for_an_abandoned_lead_waits_out_abandon_redial_min(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """SPEC §10: an abandoned lead is not re-dialed within abandon_redial_min — a callback a
    CRM or the console asks for is a re-dial too: its due time moves, with the rule."""
    from datetime import UTC, datetime

    from dialer.dispatch.chunker import call_ref
    from dialer.lifecycle import callbacks_scheduled, payload

    t0 = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    clock = FakeClock(t0)
    target = {**TARGET, "calling_hours": "00:00-24:00", "abandon_redial_min": 4320, "recycle": {}}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # no callback of its own
        await st.post(["+14155550101"])
        await st.dispatcher.tick()
        call_id, chunk_id = await pool.fetchrow("SELECT id, chunk_id FROM calls")
        cb = payload.read({"event": "terminated", "disposition": "ABANDONED",
                           "customField10": call_ref(call_id)})
        assert (await st.service.store(chunk_id, "terminal", cb)).result == "applied"
        clock.advance(60)
        asked = clock.now() + timedelta(minutes=2)
        s = await callbacks_scheduled.request(pool, st.settings, call_id, asked.isoformat(), "alice",
                                              "api", clock.now())
        assert s.due_at == t0 + timedelta(minutes=4320)
        assert s.moved is not None and s.moved["rule"] == "abandon_redial_min"
        assert await pool.fetchval("SELECT not_before FROM calls WHERE id = $1", s.call_id) == s.due_at
        # not dialed before then
        clock.advance(3600)
        await st.dispatcher.tick()
        assert await pool.fetchval("SELECT state FROM calls WHERE id = $1", s.call_id) == "retry_wait"
