"""Agent-scheduled callbacks with the injectable clock: due in the lead's local time, sent
to their owner, anyone's after the grace, moved into calling hours, cancelled by DNC, not
a recycle rule's re-dial, and re-tried by the target's callback_missed rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx

from dialer.clock import FakeClock
from dialer.dispatch.pacing import Ready
from tests.conftest import TOKEN
from tests.stack import running_stack

CHICAGO = ZoneInfo("America/Chicago")
LEAD = "+13125550100"  # a Chicago number: its zone comes from the number
TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "09:00-21:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0}


def chicago(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=CHICAGO).astimezone(UTC)


class OnlyReady:
    """An agent source that says exactly who is ready (as a PortSIP poll would)."""

    def __init__(self, agents: set[str]) -> None:
        self.agents = agents

    async def ready(self, conn: asyncpg.Connection, target: str) -> Ready:
        return Ready(set(self.agents), "test")


async def dial_first(st: Any, number: str = LEAD) -> None:
    st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # we drive the callbacks
    await st.post([number])
    await st.dispatcher.tick()


async def end_current(st: Any, disposition: str, **extra: Any) -> int:
    """A terminal callback for the call now at the provider; returns its id."""
    async with st.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT c.id, c.e164, k.token FROM calls c JOIN chunks k ON k.id = c.chunk_id "
                                  "WHERE c.state IN ('queued', 'assigned', 'connected', 'submitting')")
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{st.settings.base_url}/callbacks/ryng/terminal/{row['token']}",
                            json={"event": "terminated", "disposition": disposition, "number": row["e164"],
                                  "customField10": f"dl{row['id']}", **extra})
        assert r.status_code == 200, r.text
    return int(row["id"])


async def sent_agents(st: Any) -> list[list[str] | None]:
    """The agents each chunk named, in order."""
    async with st.pool.acquire() as conn:
        reqs = [r["request"] for r in await conn.fetch("SELECT request FROM chunks ORDER BY id")]
    return [r["body"].get("agents") for r in reqs]


async def callback_row(st: Any) -> asyncpg.Record:
    async with st.pool.acquire() as conn:
        return await conn.fetchrow("SELECT c.id, c.state, c.not_before, c.attempt, c.reason, k.owner, k.due_at "
                                   "FROM callbacks k JOIN calls c ON c.id = k.call_id ORDER BY k.call_id DESC LIMIT 1")


async def kinds(st: Any, call_id: int) -> list[str]:
    async with st.pool.acquire() as conn:
        return [r["kind"] for r in await conn.fetch("SELECT kind FROM call_events WHERE call_id = $1 ORDER BY id",
                                                    call_id)]


async def test_a_callback_at_15_chicago_is_dialed_at_15_local_by_its_agent(pool: asyncpg.Pool,
                                                                           make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await dial_first(st)
        first = await end_current(st, "CALLBACK", agent="bob", callbackAt="2026-12-01T15:00:00")
        cb = await callback_row(st)
        assert cb["owner"] == "bob" and cb["state"] == "retry_wait" and cb["reason"] == "callback"
        assert cb["not_before"] == chicago(1, 15) and cb["attempt"] == 2
        assert "callback_requested" in await kinds(st, first)
        clock.advance((chicago(1, 14, 59) - clock.now()).total_seconds())
        await st.dispatcher.tick()
        assert (await callback_row(st))["state"] == "retry_wait"  # not yet
        clock.advance(60)
        await st.dispatcher.tick()
        assert (await callback_row(st))["state"] in ("submitting", "queued", "assigned")
        assert (await sent_agents(st))[-1] == ["bob"]
        async with pool.acquire() as conn:
            body = await conn.fetchval("SELECT request FROM chunks ORDER BY id DESC LIMIT 1")
        assert body["body"]["agentMapping"] == "global"


async def test_an_owner_not_ready_within_the_grace_gives_the_callback_to_anyone(pool: asyncpg.Pool,
                                                                                 make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await dial_first(st)
        await end_current(st, "CALL_BACK", agent="bob", callbackInMin="60")  # 11:00 local
        cb = await callback_row(st)
        assert cb["due_at"] == chicago(1, 11)
        st.dispatcher.agents = OnlyReady({"alice"})  # bob has gone home
        clock.advance(3600 + 14 * 60)  # 11:14: still bob's
        await st.dispatcher.tick()
        assert (await callback_row(st))["state"] == "retry_wait"
        clock.advance(60)  # 11:15: the 15-minute grace is over
        await st.dispatcher.tick()
        cb = await callback_row(st)
        assert cb["state"] in ("submitting", "queued", "assigned")
        # anyone, as any lead: pacing by agent directs it to the one ready agent with room
        assert (await sent_agents(st))[-1] == ["alice"]
        assert "callback_owner_grace_passed" in await kinds(st, cb["id"])


async def test_a_callback_after_calling_hours_moves_to_the_next_morning(pool: asyncpg.Pool,
                                                                        make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await dial_first(st)
        await end_current(st, "CALLBACK", agent="carol", callbackAt="2026-12-01T21:30:00-06:00")
        cb = await callback_row(st)
        assert cb["due_at"] == cb["not_before"] == chicago(2, 9)
        async with pool.acquire() as conn:
            ev = await conn.fetchrow("SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'callback_moved'",
                                     cb["id"])
        assert ev["payload"]["rule"] == "calling_hours" and ev["payload"]["window"] == "09:00-21:00"
        assert ev["payload"]["asked"] == chicago(1, 21, 30).isoformat()
        clock.advance((chicago(1, 21, 30) - clock.now()).total_seconds())
        await st.dispatcher.tick()
        assert (await callback_row(st))["state"] == "retry_wait"
        clock.advance((chicago(2, 9) - clock.now()).total_seconds())
        await st.dispatcher.tick()
        assert (await sent_agents(st))[-1] == ["carol"]


async def test_a_number_put_on_dnc_meanwhile_cancels_its_callback(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await dial_first(st)
        await end_current(st, "CALLBACK", agent="bob", callbackAt="2026-12-01T15:00")
        async with httpx.AsyncClient(base_url=st.settings.base_url,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            r = await http.post("/v1/dnc", json={"numbers": [LEAD]})
            assert r.status_code == 200, r.text
        cb = await callback_row(st)
        assert cb["state"] == "cancelled"
        clock.advance((chicago(1, 15) - clock.now()).total_seconds())
        await st.dispatcher.tick()
        assert len(await sent_agents(st)) == 1  # only the first call was ever sent


async def test_a_callback_over_a_cap_waits_for_it_instead_of_ending(pool: asyncpg.Pool,
                                                                      make_settings: Any) -> None:
    """A re-dial over a cap ends ``capped``; a callback the customer asked for waits until
    the cap allows it (with a hold naming the rule), then is dialed by its owner."""
    clock = FakeClock(chicago(1, 10))
    caps = {"max_attempts_per_number": [{"count": 1, "window_h": 4}]}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET},
                             compliance=caps) as st:
        await dial_first(st)  # 10:00: the cap's one attempt in 4 h
        await end_current(st, "CALLBACK", agent="bob", callbackInMin="60")
        clock.advance(3600)  # 11:00: due, but the cap allows the next attempt at 14:00
        await st.dispatcher.tick()
        cb = await callback_row(st)
        assert cb["state"] == "scheduled" and cb["not_before"] == chicago(1, 14)
        async with st.pool.acquire() as conn:
            hold = await conn.fetchval("SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'hold'",
                                       cb["id"])
        assert hold["rule"] == "max_attempts_per_number"
        clock.advance(3 * 3600)  # 14:00
        await st.dispatcher.tick()
        assert (await callback_row(st))["state"] in ("submitting", "queued", "assigned")
        assert len(await sent_agents(st)) == 2


async def test_a_callback_is_not_a_recycle_re_dial(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    target = {**TARGET, "recycle": {"no_answer": {"after_min": 10, "max": 1}}}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        await dial_first(st)
        await end_current(st, "NO_ANSWER")  # recycle 1 of 1
        clock.advance(600)
        await st.dispatcher.tick()
        await end_current(st, "CALLBACK", agent="alice", callbackInMin="30")
        cb = await callback_row(st)
        assert cb["attempt"] == 3  # the recycle rule's max was spent; the callback still comes
        clock.advance(1800)
        await st.dispatcher.tick()
        await end_current(st, "CALLBACK", agent="alice", callbackInMin="30")  # and again
        assert (await callback_row(st))["attempt"] == 4
        async with pool.acquire() as conn:
            reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM calls ORDER BY id")]
        assert reasons == [None, "no_answer", "callback", "callback"]


async def test_a_missed_callback_follows_the_callback_missed_rule_then_ends(pool: asyncpg.Pool,
                                                                            make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    target = {**TARGET, "recycle": {"no_answer": {"after_min": 10, "max": 5}},
              "callback_missed": {"retry_after_min": 20, "max": 1}}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        await dial_first(st)
        await end_current(st, "CALLBACK", agent="bob", callbackInMin="5")
        clock.advance(300)
        await st.dispatcher.tick()
        missed = await end_current(st, "NO_ANSWER")
        cb = await callback_row(st)
        assert cb["owner"] == "bob" and cb["due_at"] == clock.now() + timedelta(minutes=20)
        assert "callback_missed" in await kinds(st, missed)
        clock.advance(1200)
        await st.dispatcher.tick()
        assert (await sent_agents(st))[-1] == ["bob"]
        last = await end_current(st, "BUSY")
        await st.dispatcher.tick()
        states = await st.states()
        assert states == {"answered": 1, "no_answer": 1, "busy": 1}  # max 1 retry, and no recycle
        async with pool.acquire() as conn:
            ev = await conn.fetchrow("SELECT payload FROM call_events WHERE call_id = $1 AND kind = 'callback_missed'",
                                     last)
        assert ev["payload"]["reason"] == "no retry left: the lead ends"


async def test_a_provider_time_already_past_or_unreadable_never_fails_the_callback(pool: asyncpg.Pool,
                                                                                   make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await dial_first(st)
        first = await end_current(st, "CALLBACK", agent="bob", callbackAt="2026-12-01T09:30:00")  # late
        cb = await callback_row(st)
        assert cb["due_at"] == clock.now() and cb["owner"] == "bob"
        async with pool.acquire() as conn:
            asked = await conn.fetchval("SELECT asked_at FROM callbacks")
        assert asked == chicago(1, 9, 30)  # what was asked is kept
        await st.dispatcher.tick()
        assert (await sent_agents(st))[-1] == ["bob"]
        assert "callback_requested" in await kinds(st, first)
        second = await end_current(st, "CALLBACK", agent="bob", callbackAt="half past three")
        assert "callback_refused" in await kinds(st, second)
        assert (await st.states()) == {"answered": 2}  # acknowledged, ended, nothing scheduled
