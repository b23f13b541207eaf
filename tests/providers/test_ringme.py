"""ringme: agent events from the fake ringme to our hook, both over real loopback HTTP."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.http import hooks
from dialer.providers.ringme import RingmeClient, RingmeError, RingmeReadiness
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


class World:
    """The fake ringme, our hook on its own server, and an API client for the fake."""

    def __init__(self, fake: FakeRingme, readiness: RingmeReadiness, hook_url: str, clock: FakeClock) -> None:
        self.fake = fake
        self.readiness = readiness
        self.hook_url = hook_url
        self.clock = clock
        self.api = httpx.AsyncClient(base_url=fake.api_url, headers={"authorization": f"Bearer {TOKEN}"})

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


@contextlib.asynccontextmanager
async def world(settings: Settings, state_path: Path | None = None) -> AsyncIterator[World]:
    clock = FakeClock()
    readiness = RingmeReadiness(settings, clock, None, state_path)
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


async def test_login_and_logout_by_get_with_the_data_in_the_query() -> None:
    async with world(make_settings()) as w:
        await w.subscribe("136")
        await w.subscribe("137")
        assert w.readiness.ready("sales") is None  # nothing heard yet
        await w.set_status("136", "available")
        await w.set_status("137", "available")
        assert w.readiness.ready("sales") == {"alice", "bob"}
        d = w.fake.deliveries[0]
        assert d.method == "GET" and d.status == 200
        assert d.data == {"agent_status": "available", "agent_type": "local", "event_source": "api",
                          "agent_id": "136", "extension_name": "000*094@ringme.ru"}
        await w.set_status("136", "logged_out")
        assert w.readiness.ready("sales") == {"bob"}
        assert w.readiness.last_heard("sales") == w.clock.monotonic()


async def test_post_events_are_form_encoded() -> None:
    async with world(make_settings()) as w:
        await w.subscribe("138", method="POST")
        await w.set_status("138", "available")
        assert w.fake.deliveries[-1].method == "POST" and w.fake.deliveries[-1].status == 200
        assert w.readiness.ready("sales") == {"carol"}
        assert w.readiness.ready("support") == {"carol"}  # each target sees its own agents only
        await w.set_status("138", "logged_out")
        assert w.readiness.ready("sales") == set()


async def test_repeated_events_change_nothing() -> None:
    async with world(make_settings()) as w:
        await w.subscribe("136")
        await w.set_status("136", "available")
        await w.set_status("136", "available")  # ringme itself sends nothing: no change
        assert len(w.fake.deliveries) == 1
        w.fake.resend_last()  # but a provider retry delivers the same event again
        w.fake.resend_last()
        await w.fake.drain()
        assert [d.status for d in w.fake.deliveries] == [200, 200, 200]
        assert w.readiness.ready("sales") == {"alice"}
        async with httpx.AsyncClient() as http:
            r = await http.get(w.hook_url, params=w.fake.deliveries[0].data)
        assert r.json() == {"status": "ok", "result": "repeat"}


async def test_phone_logins_and_remote_agents_map_by_extension_and_number() -> None:
    s = make_settings(agents={"000*094": "alice", "+79001234567": "dave"})
    async with world(s) as w:
        w.fake.add_remote_agent("9", "+79001234567")
        await w.subscribe("136")
        await w.subscribe("9", kind="remote")
        w.fake.phone("136", "available")
        await w.set_status("9", "available", kind="remote")
        assert w.fake.deliveries[0].data["event_source"] == "phone"
        assert w.fake.deliveries[1].data["agent_number"] == "+79001234567"
        assert w.readiness.ready("sales") == {"alice"}
        assert w.readiness.ready("support") == {"dave"}


async def test_an_agent_missing_from_the_mapping_is_acknowledged_and_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    async with world(make_settings(agents={"136": "alice"})) as w:
        await w.subscribe("137")
        with caplog.at_level(logging.WARNING, logger="dialer.providers.ringme"):
            await w.set_status("137", "available")
        assert w.fake.deliveries[-1].status == 200
        assert w.readiness.ready("sales") == set()
        assert "not in [ringme.agents]" in caplog.text


async def test_without_a_mapping_the_agent_id_is_the_username() -> None:
    s = load_settings(None, environ={}, overrides={
        "targets": {"sales": {"queue_id": "42", "agents_source": "ringme"}}})
    async with world(s) as w:
        await w.subscribe("136")
        await w.subscribe("137")
        await w.set_status("136", "available")
        await w.set_status("137", "available")
        assert w.readiness.ready("sales") == {"136", "137"}  # a target with no agents list: all


async def test_forged_tokens_are_refused_and_nothing_applied() -> None:
    async with world(make_settings()) as w:
        base = w.hook_url.rsplit("/", 1)[0]
        data = {"agent_id": "136", "agent_status": "available"}
        async with httpx.AsyncClient() as http:
            for token in ("ringme.agents.0000", "nope", "stringee.queue.abc", w.hook_url.rsplit("/", 1)[1] + "x"):
                assert (await http.get(f"{base}/{token}", params=data)).status_code == 401
                assert (await http.post(f"{base}/{token}", data=data)).status_code == 401
        assert w.readiness.ready("sales") is None and w.readiness.events == 0


async def test_malformed_events_are_a_400() -> None:
    async with world(make_settings()) as w, httpx.AsyncClient() as http:
        r = await http.get(w.hook_url, params={"agent_status": "available"})
        assert r.status_code == 400 and "agent_id" in r.json()["error"]["message"]
        r = await http.post(w.hook_url, data={"agent_id": "136", "agent_status": "sleeping"})
        assert r.status_code == 400
        r = await http.post(w.hook_url, data={"agent_id": "136", "event_type": "agent-login"})
        assert r.status_code == 200  # no agent_status: the event type says it
        assert w.readiness.ready("sales") == {"alice"}


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


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ringme_agents.json"
    s = make_settings()
    async with world(s, path) as w:
        await w.subscribe("136")
        await w.subscribe("137")
        await w.set_status("136", "available")
        await w.set_status("137", "available")
        await w.set_status("137", "logged_out")
    clock = FakeClock()
    again = RingmeReadiness(s, clock, None, path)
    assert again.ready("sales") == {"alice"}
    assert again.last_heard("sales") is not None
    path.write_text("{not json")
    assert RingmeReadiness(s, clock, None, path).ready("sales") is None


async def test_queue_counters_poll() -> None:
    fake = FakeRingme(TOKEN)
    fake.counters["370"] = {"answered_members": 2, "trying_members": 1, "waiting_members": 5}
    s = make_settings(base_url="http://unused", queues={"sales": "370", "support": "999"})
    async with fake.running():
        client = RingmeClient(fake.api_url, TOKEN, timeout=5)
        clock = FakeClock()
        r = RingmeReadiness(s, clock, client)
        try:
            assert await r.poll_once() == {"sales": True, "support": False}  # 999: no such queue
            assert r.counters("sales") == {"answered_members": 2, "trying_members": 1, "waiting_members": 5}
            assert r.depth("sales") == 5 and r.depth("support") is None
            assert r.last_heard("sales") == clock.monotonic() and r.last_heard("support") is None
            assert r.ready("sales") is None  # counters say nothing about agents
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
