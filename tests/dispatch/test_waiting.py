"""Why isn't it dialing? Each waiting reason provoked with the injectable clock against real
PostgreSQL and the Ryng sandbox, and seen in ``GET /v1/targets/{name}/waiting`` and in
``dialer_calls_waiting{target,reason}``.

Every reason of ``waiting.REASONS``, in both (and on the console's Targets page, in-process): ready, pacing, paused, breaker, rate_budget (a
``Retry-After``), campaign_window, calling_hours, holiday, cap, scheduled_callback, recycle and
expired_soon in the first test; rate_budget with the budget simply full in
``test_a_full_rate_budget_holds_the_dispatchable_calls``; receiving, other and a callback in
its owner's grace in the last. In a real browser against a daemon (pacing, paused,
calling_hours): ``tests/ui/test_waiting_browser.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from prometheus_client import CollectorRegistry, generate_latest

from dialer.clock import FakeClock
from dialer.dispatch import waiting
from dialer.dispatch.budget import Reservation
from dialer.dispatch.targets import set_paused
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.metrics_waiting import WaitingGauges
from tests.conftest import TOKEN
from tests.lifecycle.test_scheduled_callbacks import CHICAGO, OnlyReady, chicago, end_current
from tests.stack import Stack, running_stack
from tests.ui.conftest import BASE as UI
from tests.ui.conftest import log_in, table

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
        "calling_hours": "09:00-21:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0}
NOON = chicago(1, 12)  # Tuesday 2026-12-01, 12:00 in Chicago
TARGETS = {
    "sales": {**BASE, "recycle": {"no_answer": {"after_min": 10, "max": 1}}},
    "late": {**BASE, "queue_id": "43", "calling_hours": "22:00-23:00"},
    "xmas": {**BASE, "queue_id": "44", "holidays": ["2026-12-01"]},
    "capt": {**BASE, "queue_id": "45"},
    "later": {**BASE, "queue_id": "46", "active_from": "2026-12-02T00:00:00Z"},
    "stopped": {**BASE, "queue_id": "47"},
    "broken": {**BASE, "queue_id": "48"},
}
SALES = [f"+1312555{i:04d}" for i in range(100, 110)]  # Chicago numbers


async def api_waiting(st: Stack, name: str) -> dict[str, Any]:
    app = create_app(AppContext(settings=st.settings, pool=st.pool, clock=st.clock, dispatcher=st.dispatcher))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get(f"/v1/targets/{name}/waiting", headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


def counts(body: dict[str, Any]) -> dict[str, int]:
    return {r["reason"]: r["count"] for r in body["reasons"] if r["count"]}


def clears(body: dict[str, Any], reason: str) -> datetime | None:
    at = next(r["clears_at"] for r in body["reasons"] if r["reason"] == reason)
    return datetime.fromisoformat(at) if at else None


async def console(st: Stack) -> str:
    """The console's Targets list as the page's live refresh serves it (logged in)."""
    app = create_app(AppContext(settings=st.settings, pool=st.pool, clock=st.clock, dispatcher=st.dispatcher))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=UI) as c:
        assert (await log_in(c)).status_code == 303
        return (await c.get("/ui/targets?part=list")).text


async def on_console(st: Stack, names: list[str]) -> None:
    """Each target's console table names the same reasons with the same counts as the API."""
    html = await console(st)
    for name in names:
        shown = {r: int(n.replace(",", "")) for r, (n, _) in table(html, name).items()}
        assert shown == counts(await api_waiting(st, name)), name


async def gauge(st: Stack) -> dict[tuple[str, str], float]:
    g = WaitingGauges(lambda: list(st.settings.targets), every_s=0)
    await g.refresh(AppContext(settings=st.settings, pool=st.pool, clock=st.clock, dispatcher=st.dispatcher))
    reg = CollectorRegistry()
    reg.register(g)
    out: dict[tuple[str, str], float] = {}
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith("dialer_calls_waiting{"):
            labels, value = line.rsplit(" ", 1)
            t = labels.split('target="')[1].split('"')[0]
            r = labels.split('reason="')[1].split('"')[0]
            out[(t, r)] = float(value)
    return out


async def test_every_reason_is_counted_in_the_api_and_the_metric(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(NOON)
    caps = {"max_attempts_per_number": [{"count": 1, "window_h": 24}]}
    providers = {"ryng": {"max_calls_per_s": 100}}
    async with running_stack(pool, make_settings, clock=clock, targets=TARGETS, default_target="sales",
                             compliance=caps, providers=providers) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # we drive the callbacks
        await st.post(SALES)
        # before the dispatcher looked: as many as pacing has room for are ready, the rest wait
        body = await api_waiting(st, "sales")
        assert counts(body) == {"ready": 6, "pacing": 4} and body["total"] == 10
        assert (body["pacing_limit"], body["in_flight"], body["ready_agents"]) == (6, 0, 3)
        assert clears(body, "ready") is None and clears(body, "pacing") is None

        await st.post(["+13125550200"], target="late")
        await st.post(["+13125550201"], target="xmas")
        await st.post([SALES[0]], target="capt")  # the number sales dials first: over the cap
        await st.post(["+13125550202"], target="later")
        await st.post(["+13125550203"], target="later", expires_at=(NOON + timedelta(minutes=30)).isoformat())
        await st.post(["+13125550204"], target="stopped")
        await st.post(["+13125550205"], target="broken")
        later = await api_waiting(st, "later")  # not looked at yet: the target's window holds them
        assert counts(later) == {"campaign_window": 2, "expired_soon": 1}
        assert clears(later, "campaign_window") == datetime(2026, 12, 2, tzinfo=UTC)
        await set_paused(pool, "stopped", True, "test", clock.now())
        for _ in range(5):
            st.dispatcher.breakers["broken"].failure()
        await st.dispatcher.tick()
        states = await st.states()
        assert (states.pop("pending"), states.pop("scheduled")) == (6, 5)
        assert sum(states.values()) == 6 and set(states) <= {"queued", "assigned"}  # at the provider

        await end_current(st, "NO_ANSWER")  # a re-dial in 10 min
        await end_current(st, "CALLBACK", agent="bob", callbackAt="2026-12-01T15:00:00")

        sales = await api_waiting(st, "sales")
        # 4 in flight of 6: room for 2 of the 4 left
        assert counts(sales) == {"ready": 2, "pacing": 2, "recycle": 1, "scheduled_callback": 1}
        assert sales["total"] == 6 and sales["in_flight"] == 4
        assert clears(sales, "recycle") == NOON + timedelta(minutes=10)
        assert clears(sales, "scheduled_callback") == chicago(1, 15)
        late = await api_waiting(st, "late")
        assert counts(late) == {"calling_hours": 1} and clears(late, "calling_hours") == chicago(1, 22)
        xmas = await api_waiting(st, "xmas")
        assert counts(xmas) == {"holiday": 1} and clears(xmas, "holiday") == chicago(2, 9)
        capt = await api_waiting(st, "capt")
        assert counts(capt) == {"cap": 1} and clears(capt, "cap") == NOON + timedelta(hours=24)
        later = await api_waiting(st, "later")  # held now, with the rule on the row
        assert counts(later) == {"campaign_window": 2, "expired_soon": 1}
        assert clears(later, "expired_soon") == NOON + timedelta(minutes=30)
        stopped = await api_waiting(st, "stopped")
        assert counts(stopped) == {"paused": 1} and clears(stopped, "paused") is None
        broken = await api_waiting(st, "broken")
        assert counts(broken) == {"breaker": 1} and clears(broken, "breaker") == NOON + timedelta(seconds=15)

        seen = await gauge(st)
        assert {k for k, v in seen.items() if v} == {
            ("sales", "ready"), ("sales", "pacing"), ("sales", "recycle"), ("sales", "scheduled_callback"),
            ("late", "calling_hours"), ("xmas", "holiday"), ("capt", "cap"), ("later", "campaign_window"),
            ("later", "expired_soon"), ("stopped", "paused"), ("broken", "breaker")}
        assert seen[("sales", "ready")] == 2 and seen[("later", "campaign_window")] == 2
        assert len(seen) == len(TARGETS) * len(waiting.REASONS)  # every series, zeros included
        await on_console(st, list(TARGETS))  # and the same on the console's Targets page

        # a 429 with Retry-After: the shared budget holds every send
        await st.dispatcher.budget.finish(None, status=429, retry_after_s=120)
        sales = await api_waiting(st, "sales")
        assert counts(sales) == {"rate_budget": 4, "recycle": 1, "scheduled_callback": 1}
        assert clears(sales, "rate_budget") == NOON + timedelta(seconds=120)
        assert (await gauge(st))[("sales", "rate_budget")] == 4
        await on_console(st, ["sales"])


async def test_unknown_target_is_404_in_the_error_shape(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, clock=FakeClock(NOON), targets={"sales": BASE}) as st:
        app = create_app(AppContext(settings=st.settings, pool=pool, clock=st.clock))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/v1/targets/nope/waiting", headers=AUTH)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            body = (await c.get("/v1/targets/sales/waiting", headers=AUTH)).json()
        assert body["total"] == 0 and [r["reason"] for r in body["reasons"]] == list(waiting.REASONS)
        assert CHICAGO is not None


async def test_a_due_callback_in_its_owners_grace_a_batch_still_coming_in_and_an_old_hold(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": BASE}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        first = await st.post([SALES[0]])
        await st.dispatcher.tick()
        await end_current(st, "CALL_BACK", agent="bob", callbackInMin="60")  # 11:00 local, bob's
        st.dispatcher.agents = OnlyReady({"alice"})  # bob has gone home
        clock.advance(3600 + 5 * 60)  # 11:05: due, still bob's for 10 more minutes
        await st.dispatcher.tick()
        body = await api_waiting(st, "sales")
        assert counts(body) == {"scheduled_callback": 1}
        assert clears(body, "scheduled_callback") == chicago(1, 11, 15)
        async with pool.acquire() as conn:  # a batch whose rows are still coming in
            bid = await conn.fetchval("INSERT INTO batches (target, source, state, created_at) "
                                      "VALUES ('sales', 'api', 'receiving', $1) RETURNING id", clock.now())
            await conn.execute("INSERT INTO calls (batch_id, target, line, e164, state) "
                               "VALUES ($1, 'sales', 1, '+13125550300', 'pending')", bid)
        assert counts(await api_waiting(st, "sales")) == {"scheduled_callback": 1, "receiving": 1}
        async with pool.acquire() as conn:  # a hold recorded before migration 0013: no kind on the row
            await conn.execute("INSERT INTO calls (batch_id, target, line, e164, state, not_before) "
                               "VALUES ($1, 'sales', 2, '+13125550301', 'scheduled', $2)",
                               first, clock.now() + timedelta(hours=2))
        body = await api_waiting(st, "sales")
        assert counts(body) == {"scheduled_callback": 1, "receiving": 1, "other": 1}
        assert clears(body, "other") == clock.now() + timedelta(hours=2)
        seen = await gauge(st)
        assert {k: v for k, v in seen.items() if v} == {
            ("sales", "scheduled_callback"): 1, ("sales", "receiving"): 1, ("sales", "other"): 1}
        await on_console(st, ["sales"])


async def test_a_full_rate_budget_holds_the_dispatchable_calls(pool: asyncpg.Pool, make_settings: Any) -> None:
    """No 429 at all: the budget is simply full (2 calls/s, both spent) until a 1-call send fits."""
    clock = FakeClock(NOON)
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": BASE},
                             providers={"ryng": {"max_calls_per_s": 2}}) as st:
        await st.post(SALES[:3])
        assert counts(await api_waiting(st, "sales")) == {"ready": 3}
        budget = st.dispatcher.budget
        r = await budget.acquire(2)  # another instance's send of 2 calls, still out
        assert isinstance(r, Reservation)
        body = await api_waiting(st, "sales")
        assert counts(body) == {"rate_budget": 3}
        assert clears(body, "rate_budget") == NOON + timedelta(seconds=1)
        seen = await gauge(st)
        assert seen[("sales", "rate_budget")] == 3 and seen[("sales", "ready")] == 0
        clock.advance(0.5)
        await budget.finish(r)  # answered: counts one window (1 s) from now
        assert clears(await api_waiting(st, "sales"), "rate_budget") == NOON + timedelta(seconds=1.5)
        async with pool.acquire() as conn:  # read only: nothing reserved, nothing locked
            assert await conn.fetchval("SELECT count(*) FROM rate_budget_sends") == 1
        clock.advance(1)
        assert counts(await api_waiting(st, "sales")) == {"ready": 3}
        assert (await gauge(st))[("sales", "rate_budget")] == 0
