"""ringme: agent events from the fake ringme to our hook, both over real loopback HTTP,
into the shared agent table in a real PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from starlette.applications import Starlette

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.http import hooks
from dialer.providers.agent_state import SourceView
from dialer.providers.ringme import BadEvent, RingmeClient, RingmeError, RingmeReadiness, event_time
from tests.fakes import FakeRingme, serve

SECRET = b"hook-secret"
TOKEN = "ringme-test-token"
AGENTS = {"136": "alice", "137": "bob", "138": "carol"}


def make_settings(**ringme: Any) -> Settings:
    return load_settings(None, environ={}, overrides={
        "targets": {"sales": {"queue_id": "42", "agents": ["alice", "bob", "carol"], "agents_source": "ringme"},
                    "support": {"queue_id": "43", "agents": ["carol", "dave"], "agents_source": "ringme"}},
        "default_target": "sales",
        "public_url": "http://dialer.example",
        "ringme": {"agents": AGENTS, **ringme},
    })


async def view(r: RingmeReadiness, target: str) -> SourceView:
    async with r.pool.acquire() as conn:
        return await r.view(conn, target)


class World:
    """The fake ringme, our hook on its own server, and an API client for the fake."""

    def __init__(self, fake: FakeRingme, readiness: RingmeReadiness, hook_url: str, clock: FakeClock) -> None:
        self.fake = fake
        self.readiness = readiness
        self.hook_url = hook_url
        self.clock = clock
        self.api = httpx.AsyncClient(base_url=fake.api_url, headers={"authorization": f"Bearer {TOKEN}"})

    async def ready(self, target: str) -> set[str] | None:
        return (await view(self.readiness, target)).ready

    async def subscribe(self, agent_id: str, method: str = "GET", kind: str = "local") -> None:
        for event_type in ("agent-login", "agent-logout"):
            r = await self.api.post(f"/client/12/agent/{kind}/{agent_id}/event/",
                                    json={"url": self.hook_url, "method": method, "event_type": event_type})
            assert r.status_code == 200, r.text
            assert r.json()["event_type"] == event_type and r.json()["method"] == method

    async def set_status(self, agent_id: str, status: str, kind: str = "local") -> None:
        r = await self.api.put(f"/client/12/agent/{kind}/{agent_id}", json={"status": status})
        assert r.status_code == 200, r.text
        await self.fake.drain()
        self.clock.advance(1)  # events a second apart, as people click


@contextlib.asynccontextmanager
async def world(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[World]:
    clock = FakeClock()
    readiness = RingmeReadiness(settings, clock, pool)
    app = Starlette(routes=hooks.routes(SECRET, readiness, None))
    fake = FakeRingme(TOKEN)
    fake.add_local_agent("136", "000*094@ringme.ru")
    fake.add_local_agent("137", "000*095@ringme.ru")
    fake.add_local_agent("138", "000*096@ringme.ru")
    async with serve(app) as hook_base, fake.running():
        url = hook_base + hooks.ringme_url(settings, SECRET).removeprefix(settings.base_url)
        w = World(fake, readiness, url, clock)
        try:
            yield w
        finally:
            await w.api.aclose()


async def test_login_and_logout_by_get_with_the_data_in_the_query(pool: asyncpg.Pool) -> None:
    async with world(make_settings(), pool) as w:
        await w.subscribe("136")
        await w.subscribe("137")
        assert await w.ready("sales") is None  # nothing heard yet
        await w.set_status("136", "available")
        await w.set_status("137", "available")
        assert await w.ready("sales") == {"alice", "bob"}
        d = w.fake.deliveries[0]
        assert d.method == "GET" and d.status == 200
        assert d.data == {"agent_status": "available", "agent_type": "local", "event_source": "api",
                          "agent_id": "136", "extension_name": "000*094@ringme.ru"}
        await w.set_status("136", "logged_out")
        assert await w.ready("sales") == {"bob"}
        assert (await view(w.readiness, "sales")).heard_at == w.clock.now() - timedelta(seconds=1)


async def test_post_events_are_form_encoded(pool: asyncpg.Pool) -> None:
    async with world(make_settings(), pool) as w:
        await w.subscribe("138", method="POST")
        await w.set_status("138", "available")
        assert w.fake.deliveries[-1].method == "POST" and w.fake.deliveries[-1].status == 200
        assert await w.ready("sales") == {"carol"}
        assert await w.ready("support") == {"carol"}  # each target sees its own agents only
        await w.set_status("138", "logged_out")
        assert await w.ready("sales") == set()


async def test_repeated_events_change_nothing(pool: asyncpg.Pool) -> None:
    async with world(make_settings(), pool) as w:
        await w.subscribe("136")
        await w.set_status("136", "available")
        await w.set_status("136", "available")  # ringme itself sends nothing: no change
        assert len(w.fake.deliveries) == 1
        w.fake.resend_last()  # but a provider retry delivers the same event again
        w.fake.resend_last()
        await w.fake.drain()
        assert [d.status for d in w.fake.deliveries] == [200, 200, 200]
        assert await w.ready("sales") == {"alice"}
        async with httpx.AsyncClient() as http:
            r = await http.get(w.hook_url, params=w.fake.deliveries[0].data)
        assert r.json() == {"status": "ok", "result": "repeat"}


async def test_phone_logins_and_remote_agents_map_by_extension_and_number(pool: asyncpg.Pool) -> None:
    s = make_settings(agents={"000*094": "alice", "+79001234567": "dave"})
    async with world(s, pool) as w:
        w.fake.add_remote_agent("9", "+79001234567")
        await w.subscribe("136")
        await w.subscribe("9", kind="remote")
        w.fake.phone("136", "available")
        await w.set_status("9", "available", kind="remote")
        assert w.fake.deliveries[0].data["event_source"] == "phone"
        assert w.fake.deliveries[1].data["agent_number"] == "+79001234567"
        assert await w.ready("sales") == {"alice"}
        assert await w.ready("support") == {"dave"}


async def test_an_agent_missing_from_the_mapping_is_acknowledged_and_ignored(
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    async with world(make_settings(agents={"136": "alice"}), pool) as w:
        await w.subscribe("137")
        with caplog.at_level(logging.WARNING, logger="dialer.providers.ringme"):
            await w.set_status("137", "available")
        assert w.fake.deliveries[-1].status == 200
        assert await w.ready("sales") == set()
        assert "not in [ringme.agents]" in caplog.text


async def test_without_a_mapping_the_agent_id_is_the_username(pool: asyncpg.Pool) -> None:
    s = load_settings(None, environ={}, overrides={
        "targets": {"sales": {"queue_id": "42", "agents_source": "ringme"}}})
    async with world(s, pool) as w:
        await w.subscribe("136")
        await w.subscribe("137")
        await w.set_status("136", "available")
        await w.set_status("137", "available")
        assert await w.ready("sales") == {"136", "137"}  # a target with no agents list: all


async def test_forged_tokens_are_refused_and_nothing_applied(pool: asyncpg.Pool) -> None:
    async with world(make_settings(), pool) as w:
        base = w.hook_url.rsplit("/", 1)[0]
        data = {"agent_id": "136", "agent_status": "available"}
        async with httpx.AsyncClient() as http:
            for token in ("ringme.agents.0000", "nope", "stringee.queue.abc", w.hook_url.rsplit("/", 1)[1] + "x"):
                assert (await http.get(f"{base}/{token}", params=data)).status_code == 401
                assert (await http.post(f"{base}/{token}", data=data)).status_code == 401
        assert await w.ready("sales") is None and w.readiness.events == 0


async def test_malformed_events_are_a_400(pool: asyncpg.Pool) -> None:
    async with world(make_settings(), pool) as w, httpx.AsyncClient() as http:
        r = await http.get(w.hook_url, params={"agent_status": "available"})
        assert r.status_code == 400 and "agent_id" in r.json()["error"]["message"]
        r = await http.post(w.hook_url, data={"agent_id": "136", "agent_status": "sleeping"})
        assert r.status_code == 400
        r = await http.post(w.hook_url, data={"agent_id": "136", "event_type": "agent-login"})
        assert r.status_code == 200  # no agent_status: the event type says it
        assert await w.ready("sales") == {"alice"}


async def test_an_event_the_database_cannot_take_is_not_acknowledged(db_url: str) -> None:
    from dialer.store.database import create_pool

    s = make_settings()
    p = await create_pool(db_url, min_size=1, max_size=1)
    r = RingmeReadiness(s, FakeClock(), p)
    await p.close()  # the database is away: ringme (or its relay) must not be told 200
    app = Starlette(routes=hooks.routes(SECRET, r, None))
    async with serve(app) as base, httpx.AsyncClient() as http:
        url = base + hooks.ringme_url(s, SECRET).removeprefix(s.base_url)
        resp = await http.get(url, params={"agent_id": "136", "agent_status": "available"})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"


async def test_the_fake_refuses_a_bad_token_and_limits_events() -> None:
    fake = FakeRingme(TOKEN, max_events=1)
    fake.add_local_agent("136", "000*094@ringme.ru")
    async with fake.running(), httpx.AsyncClient(base_url=fake.api_url) as http:
        r = await http.get("/client/12/agent/local/", headers={"authorization": "Bearer nope"})
        assert r.status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        ev = {"url": "http://127.0.0.1:9/x", "method": "GET", "event_type": "agent-login"}
        assert (await http.post("/client/12/agent/local/136/event/", json=ev, headers=auth)).status_code == 200
        r = await http.post("/client/12/agent/local/136/event/", json=ev, headers=auth)
        assert r.status_code == 400 and "limit" in r.text


async def test_statuses_live_in_the_database_for_a_restart_and_every_instance(pool: asyncpg.Pool) -> None:
    s = make_settings()
    async with world(s, pool) as w:
        await w.subscribe("136")
        await w.subscribe("137")
        await w.set_status("136", "available")
        await w.set_status("137", "available")
        await w.set_status("137", "logged_out")
    # a restarted instance, or another one behind the balancer: no state of its own
    other = RingmeReadiness(s, FakeClock(), pool)
    seen = await view(other, "sales")
    assert seen.ready == {"alice"} and seen.heard_at is not None


async def test_a_late_event_never_overrides_a_newer_one(pool: asyncpg.Pool) -> None:
    s = make_settings()
    clock = FakeClock()
    r = RingmeReadiness(s, clock, pool)
    t0 = clock.now()
    login = {"agent_id": "136", "agent_status": "available"}
    logout = {"agent_id": "136", "agent_status": "logged_out"}
    # the event's own time orders events, whatever order they arrive in
    assert (await r.apply({**logout, "event_time": (t0 - timedelta(seconds=5)).isoformat()})).result == "changed"
    assert (await r.apply({**login, "event_time": str((t0 - timedelta(seconds=10)).timestamp())})).result == "stale"
    assert (await view(r, "sales")).ready == set()
    # a delivery retried later is a repeat: nothing moves
    assert (await r.apply({**logout, "event_time": (t0 - timedelta(seconds=5)).isoformat()})).result == "repeat"
    # with no time of its own, an event is stamped when it reached an instance: two
    # instances whose events commit in the other order still keep the newer one
    early, late = FakeClock(), FakeClock()
    late.advance(30)
    a, b = RingmeReadiness(s, early, pool), RingmeReadiness(s, late, pool)
    assert (await b.apply({"agent_id": "137", "agent_status": "available"})).result == "changed"
    assert (await a.apply({"agent_id": "137", "agent_status": "logged_out"})).result == "stale"
    assert (await view(a, "sales")).ready == {"bob"} == (await view(b, "sales")).ready
    # same time, two events: the later arrival wins (the database's sequence)
    assert (await a.apply({"agent_id": "138", "agent_status": "available"})).result == "changed"
    assert (await a.apply({"agent_id": "138", "agent_status": "logged_out"})).result == "changed"
    assert (await view(a, "sales")).ready == {"bob"}
    async with pool.acquire() as conn:
        rows = {r["agent"]: r["status"] for r in await conn.fetch("SELECT agent, status FROM agent_status")}
    assert rows == {"alice": "logged_out", "bob": "available", "carol": "logged_out"}


def test_event_time_is_iso_or_unix_seconds_and_never_in_the_future() -> None:
    now = FakeClock().now()
    assert event_time(None, now) == now and event_time("", now) == now
    assert event_time("2026-01-05T11:00:00Z", now) == now - timedelta(hours=1)
    assert event_time("2026-01-05T11:00:00", now) == now - timedelta(hours=1)  # naive: UTC
    assert event_time(str(now.timestamp() - 60), now) == now - timedelta(minutes=1)
    assert event_time("2099-01-01T00:00:00+00:00", now) == now
    for bad in ("yesterday", "1e400"):
        with pytest.raises(BadEvent):
            event_time(bad, now)


async def test_concurrent_events_for_one_agent_leave_the_newest(pool: asyncpg.Pool) -> None:
    import anyio

    s = make_settings()
    clocks = [FakeClock() for _ in range(20)]
    for i, c in enumerate(clocks):
        c.advance(i)
    instances = [RingmeReadiness(s, c, pool) for c in clocks]

    async def send(i: int) -> None:
        status = "available" if i % 2 else "logged_out"
        await instances[i].apply({"agent_id": "136", "agent_status": status})

    async with anyio.create_task_group() as tg:
        for i in reversed(range(20)):
            tg.start_soon(send, i)
    assert (await view(instances[0], "sales")).ready == {"alice"}  # i = 19: available


async def test_an_older_versions_state_file_is_imported_once(pool: asyncpg.Pool, tmp_path: Path) -> None:
    s = make_settings()
    clock = FakeClock()
    path = tmp_path / "ringme_agents.json"
    old = (clock.now() - timedelta(hours=1)).isoformat()
    path.write_bytes(orjson.dumps({"agents": {"alice": {"status": "available", "at": old, "raw_id": "136"},
                                              "bob": {"status": "available", "at": old, "raw_id": "137"}}}))
    r = RingmeReadiness(s, clock, pool)
    await r.apply({"agent_id": "137", "agent_status": "logged_out"})  # newer than the file
    assert await r.import_file(path) == 2
    assert (await view(r, "sales")).ready == {"alice"}
    assert not path.exists() and path.with_name("ringme_agents.json.imported").exists()
    assert await r.import_file(path) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert await r.import_file(bad) == 0 and bad.exists()


async def test_queue_counters_poll(pool: asyncpg.Pool) -> None:
    fake = FakeRingme(TOKEN)
    fake.counters["370"] = {"answered_members": 2, "trying_members": 1, "waiting_members": 5}
    s = make_settings(base_url="http://unused", queues={"sales": "370", "support": "999"})
    async with fake.running():
        client = RingmeClient(fake.api_url, TOKEN, timeout=5)
        clock = FakeClock()
        r = RingmeReadiness(s, clock, pool, client)
        try:
            assert await r.poll_once() == {"sales": True, "support": False}  # 999: no such queue
            sales, support = await view(r, "sales"), await view(r, "support")
            assert sales.counters == {"answered_members": 2, "trying_members": 1, "waiting_members": 5}
            assert sales.depth == 5 and support.depth is None
            assert sales.heard_at == clock.now() and support.heard_at is None
            assert sales.ready is None  # counters say nothing about agents
            assert r.silence_default("sales") == 120.0 and r.silence_default("support") == 120.0
        finally:
            await client.close()
        bad = RingmeClient(fake.api_url, "wrong", timeout=5)
        try:
            with pytest.raises(RingmeError) as err:
                await bad.queue_status("370")
            assert err.value.status == 401
        finally:
            await bad.close()
