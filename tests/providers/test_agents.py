"""The per-target agent source with its static fallback, and the issue's end-to-end check:
ringme logouts lower the real Dispatcher's pacing limit within one tick."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import anyio
import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from dialer.clock import FakeClock, SystemClock
from dialer.config import Settings, load_settings
from dialer.http import hooks
from dialer.logs import scrub
from dialer.providers import agent_state
from dialer.providers.agent_state import SourceView
from dialer.providers.agents import FALLBACK_NAME, AgentSelector, Providers
from tests.conftest import await_for
from tests.fakes import FakePortSip, FakeRingme, serve
from tests.stack import running_stack

NO_CONN = cast(asyncpg.Connection, None)  # the stubs read nothing from a connection


class Stub:
    """A provider source whose answers the test sets."""

    def __init__(self, silence: float | None = 30.0) -> None:
        self.heard: datetime | None = None
        self.agents: set[str] | None = None
        self.silence = silence
        self.waiting: int | None = None

    async def view(self, conn: asyncpg.Connection, target: str) -> SourceView:
        return SourceView(None if self.agents is None else set(self.agents), self.heard, self.waiting)

    def silence_default(self, target: str) -> float | None:
        return self.silence


async def ready(sel: AgentSelector, target: str, conn: asyncpg.Connection = NO_CONN) -> set[str] | None:
    return (await sel.ready(conn, target)).agents


async def source(sel: AgentSelector, target: str, conn: asyncpg.Connection = NO_CONN) -> str:
    return (await sel.ready(conn, target)).source


def settings(**targets: dict[str, Any]) -> Settings:
    base = {"queue_id": "1", "agents": ["alice", "bob", "carol"]}
    return load_settings(None, environ={}, overrides={
        "targets": {name: {**base, **t} for name, t in targets.items()},
        "default_target": next(iter(targets)),
        "portsip": {"base_url": "http://pbx.invalid:8887",
                    "queues": {n: {"queue": "8000"} for n, t in targets.items()
                               if t.get("agents_source") == "portsip"}},
    })


async def test_a_static_target_uses_its_list() -> None:
    sel = AgentSelector(settings(sales={}), FakeClock(), {})
    assert await ready(sel, "sales") == {"alice", "bob", "carol"}
    assert not sel.fallback("sales") and await source(sel, "sales") == "static"


async def test_falls_back_while_silent_and_comes_back_when_the_source_speaks(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    src = Stub(silence=30)
    sel = AgentSelector(settings(sales={"agents_source": "portsip"}), clock, {"portsip": src})
    with caplog.at_level(logging.INFO, logger="dialer.providers.agents"):
        # never heard: the static list, flagged, one log line however often pacing asks
        for _ in range(3):
            assert await ready(sel, "sales") == {"alice", "bob", "carol"}
        assert sel.fallback("sales") and await source(sel, "sales") == FALLBACK_NAME
        assert [r.getMessage() for r in caplog.records] == [
            "agent source unavailable; pacing falls back to the static agents list"]
        assert caplog.records[0].__dict__["reason"] == "no word from it yet"
        caplog.clear()

        src.heard, src.agents = clock.now(), {"bob"}
        assert await ready(sel, "sales") == {"bob"} and not sel.fallback("sales")
        assert await source(sel, "sales") == "portsip"
        clock.advance(30)  # exactly the limit: still live
        assert await ready(sel, "sales") == {"bob"}
        clock.advance(1)
        assert await ready(sel, "sales") == {"alice", "bob", "carol"} and sel.fallback("sales")
        assert "silent for 31 s" in caplog.records[-1].__dict__["reason"]
        src.heard = clock.now()
        assert await ready(sel, "sales") == {"bob"} and sel.fallbacks() == {"sales": False}
    assert [r.getMessage() for r in caplog.records] == [
        "agent source speaks again; pacing follows it",
        "agent source unavailable; pacing falls back to the static agents list",
        "agent source speaks again; pacing follows it"]


async def test_the_target_threshold_wins_over_the_source_default() -> None:
    clock = FakeClock()
    src = Stub(silence=300)
    sel = AgentSelector(settings(sales={"agents_source": "portsip", "agents_silence_s": 5}), clock,
                        {"portsip": src})
    src.heard, src.agents = clock.now(), set()
    assert await ready(sel, "sales") == set()  # everyone logged out: nobody is ready, not a fallback
    assert sel.silence_s("sales") == 5
    clock.advance(6)
    assert await ready(sel, "sales") == {"alice", "bob", "carol"}


async def test_an_event_source_with_no_poll_never_goes_stale_once_heard() -> None:
    clock = FakeClock()
    src = Stub(silence=None)
    sel = AgentSelector(settings(sales={"agents_source": "ringme"}), clock, {"ringme": src})
    src.heard, src.agents = clock.now(), {"carol"}
    clock.advance(10 * 24 * 3600)
    assert await ready(sel, "sales") == {"carol"} and not sel.fallback("sales")


async def test_a_source_that_knows_no_agent_yet_and_a_missing_source_fall_back() -> None:
    clock = FakeClock()
    src = Stub()
    src.heard = clock.now()  # e.g. only the counters poll answered
    s = settings(a={"agents_source": "ringme"}, b={"agents_source": "portsip", "agents": []})
    sel = AgentSelector(s, clock, {"ringme": src})
    assert await ready(sel, "a") == {"alice", "bob", "carol"} and sel.fallback("a")
    assert await ready(sel, "b") is None  # no static list either: pacing's one-agent floor applies
    assert sel.fallback("b") and await source(sel, "b") == FALLBACK_NAME


async def test_depth_comes_from_the_targets_source() -> None:
    p, r = Stub(), Stub()
    p.waiting, r.waiting = 7, 2
    s = settings(a={"agents_source": "portsip"}, b={"agents_source": "ringme"}, c={})
    sel = AgentSelector(s, FakeClock(), {"portsip": p, "ringme": r})
    assert (await sel.depth(NO_CONN, "a"), await sel.depth(NO_CONN, "b")) == (7, 2)
    p.waiting = r.waiting = None
    assert await sel.depth(NO_CONN, "c") is None


async def test_providers_build_what_is_configured_and_follow_a_reload(tmp_path: Path, pool: asyncpg.Pool) -> None:
    bare = load_settings(None, environ={"DIALER_STATE_DIR": str(tmp_path)})
    p = Providers(bare, FakeClock(), pool)
    assert p.portsip is None and p.ringme.client is None
    assert set(p.selector.sources) == {"ringme"}

    s = load_settings(None, environ={"DIALER_STATE_DIR": str(tmp_path), "DIALER_PORTSIP_TOKEN": "pbx-secret-9",
                                     "DIALER_RINGME_TOKEN": "rm-secret-77"},
                      overrides={"targets": {"sales": {"queue_id": "1", "agents": ["a"], "agents_source": "portsip"}},
                                 "portsip": {"base_url": "http://pbx:8887/api", "queues": {"sales": {"queue": "8000"}}},
                                 "ringme": {"base_url": "http://rm/api/ver1.0", "queues": {"sales": "370"}}})
    p = Providers(s, FakeClock(), pool)
    assert p.portsip is not None and p.portsip.client.base_url == "http://pbx:8887"
    assert p.ringme.client is not None
    assert scrub("token pbx-secret-9 and rm-secret-77") == "token *** and ***"
    new = s.model_copy(update={"targets": {**s.targets, "new": s.targets["sales"].model_copy(
        update={"agents": ["z"], "agents_source": "static"})}})
    p.settings = new
    assert await ready(p.selector, "new") == {"z"} and p.ringme.settings is new and p.portsip.settings is new


async def test_portsip_silence_falls_back_and_recovers_with_the_real_poll(pool: asyncpg.Pool) -> None:
    pbx = FakePortSip("tok")
    qid = pbx.add_queue("Sales", "8000", {"101": "READY", "102": "NOT_READY"})
    clock = FakeClock()
    s = load_settings(None, environ={"DIALER_PORTSIP_TOKEN": "tok"}, overrides={
        "targets": {"sales": {"queue_id": "1", "agents": ["alice", "bob", "carol"], "agents_source": "portsip"}},
        "portsip": {"poll_s": 5, "queues": {"sales": {"queue": "8000", "agents": {"101": "alice", "102": "bob"}}},
                    "base_url": "http://placeholder"}})
    async with pbx.running() as url, pool.acquire() as conn:
        s = s.model_copy(update={"portsip": s.portsip.model_copy(update={"base_url": url})})
        p = Providers(s, clock, pool)
        try:
            sel = p.selector
            assert await ready(sel, "sales", conn) == {"alice", "bob", "carol"} and sel.fallback("sales")
            assert p.portsip is not None
            await p.portsip.poll_once()
            assert await ready(sel, "sales", conn) == {"alice"} and await source(sel, "sales", conn) == "portsip"
            pbx.fail_with = 500
            for _ in range(6):  # 30 s of failed polls: still within max(30, 4 x 5)
                clock.advance(5)
                await p.portsip.poll_once()
            assert await ready(sel, "sales", conn) == {"alice"}
            clock.advance(5)
            await p.portsip.poll_once()
            assert await ready(sel, "sales", conn) == {"alice", "bob", "carol"} and sel.fallback("sales")
            pbx.fail_with = None
            pbx.set_status(qid, "102", "READY")
            await p.portsip.poll_once()
            assert await ready(sel, "sales", conn) == {"alice", "bob"} and not sel.fallback("sales")
        finally:
            await p.aclose()


async def test_providers_run_polls_until_cancelled_and_survive_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      pool: asyncpg.Pool) -> None:
    pbx = FakePortSip("tok")
    qid = pbx.add_queue("Sales", "8000", {"101": "READY"})
    async with pbx.running() as url, pool.acquire() as conn:
        s = load_settings(None, environ={"DIALER_PORTSIP_TOKEN": "tok"}, overrides={
            "targets": {"sales": {"queue_id": "1", "agents": ["alice"], "agents_source": "portsip"}},
            "portsip": {"poll_s": 0.02, "base_url": url, "queues": {"sales": {"queue": "8000"}}}})
        p = Providers(s, SystemClock(), pool)
        assert p.portsip is not None
        real = p.portsip.poll_once
        calls = 0

        async def flaky(c: asyncpg.Connection | None = None) -> dict[str, bool]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            return await real(c)

        monkeypatch.setattr(p.portsip, "poll_once", flaky)
        try:
            with caplog.at_level(logging.ERROR, logger="dialer.providers.agents"):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(p.run)
                    async def ready_is(agents: set[str]) -> bool:
                        return await ready(p.selector, "sales", conn) == agents

                    await await_for(lambda: ready_is({"101"}), 10, "first good poll")
                    pbx.set_status(qid, "101", "BREAK")
                    await await_for(lambda: ready_is(set()), 10, "status change seen")
                    tg.cancel_scope.cancel()
            assert "provider poll failed" in caplog.text
        finally:
            await p.aclose()


async def test_three_instances_poll_once_per_interval_and_all_see_the_result(pool: asyncpg.Pool) -> None:
    """Providers of three instances on one database: one PBX poll per interval, whoever
    runs it, and every instance's selector paces on its result."""
    pbx = FakePortSip("tok")
    qid = pbx.add_queue("Sales", "8000", {"101": "READY", "102": "READY"})
    clock = FakeClock()
    async with pbx.running() as url, pool.acquire() as conn:
        s = load_settings(None, environ={"DIALER_PORTSIP_TOKEN": "tok"}, overrides={
            "targets": {"sales": {"queue_id": "1", "agents": ["a"], "agents_source": "portsip"}},
            "portsip": {"poll_s": 5, "base_url": url, "queues": {"sales": {"queue": "8000"}}}})
        instances = [Providers(s, clock, pool, instance_id=f"i{i}") for i in range(3)]
        try:
            async def turn(p: Providers) -> float:
                assert p.portsip is not None
                return await agent_state.poll_turn(pool, "portsip", p.instance_id, 5, clock, p.portsip.poll_once)

            waits = [0.0] * 3

            async def one(i: int, p: Providers) -> None:
                waits[i] = await turn(p)

            for _ in range(3):

                async with anyio.create_task_group() as tg:  # all three at once
                    for i, p in enumerate(instances):
                        tg.start_soon(one, i, p)
                assert sorted(waits) == [5.0, 5.0, 5.0]  # the poller's interval, or the rest of it
                clock.advance(2)
                assert [await turn(p) for p in instances] == [3.0, 3.0, 3.0]  # not due: nobody polls
                clock.advance(3)
            assert pbx.count("/waiting") == 3  # three intervals, three polls, not nine
            for p in instances:
                assert await ready(p.selector, "sales", conn) == {"101", "102"}
            pbx.set_status(qid, "101", "BREAK")
            await turn(instances[2])
            for p in instances:
                assert await ready(p.selector, "sales", conn) == {"102"}
            polled_by = await conn.fetchval("SELECT polled_by FROM provider_polls WHERE source = 'portsip'")
            assert polled_by == "i2"
        finally:
            for p in instances:
                await p.aclose()


# -- the check, with the real Dispatcher and PostgreSQL ---------------------------------------
TARGETS = {
    "sales": {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
              "calling_hours": "00:00-24:00", "calls_per_agent": 2, "chunk_size": 50, "max_dispose_s": 0,
              "agents_source": "ringme"},
}
RINGME_AGENTS = {"136": "alice", "137": "bob", "138": "carol"}


@contextlib.asynccontextmanager
async def ringme_hook(providers: Providers, settings: Settings) -> AsyncIterator[tuple[FakeRingme, str]]:
    secret = settings.secret()
    app = Starlette(routes=hooks.routes(secret, providers.ringme, None))
    fake = FakeRingme("rm-token")
    for agent_id in RINGME_AGENTS:
        fake.add_local_agent(agent_id, f"000*{agent_id}@ringme.ru")
    async with serve(app) as base, fake.running():
        url = base + hooks.ringme_url(settings, secret).removeprefix(settings.base_url)
        async with httpx.AsyncClient(base_url=fake.api_url, headers={"authorization": "Bearer rm-token"}) as api:
            for agent_id in RINGME_AGENTS:
                for event_type in ("agent-login", "agent-logout"):
                    r = await api.post(f"/client/12/agent/local/{agent_id}/event/",
                                       json={"url": url, "method": "POST", "event_type": event_type})
                    assert r.status_code == 200
        yield fake, url


async def set_status(fake: FakeRingme, agent_ids: list[str], status: str) -> None:
    async with httpx.AsyncClient(base_url=fake.api_url, headers={"authorization": "Bearer rm-token"}) as api:
        for agent_id in agent_ids:
            assert (await api.put(f"/client/12/agent/local/{agent_id}", json={"status": status})).status_code == 200
    await fake.drain()
    assert all(d.status == 200 for d in fake.deliveries)


async def test_ringme_logouts_lower_the_pacing_limit_within_one_tick(pool: asyncpg.Pool,
                                                                     make_settings: Callable[..., Settings]) -> None:
    async with running_stack(pool, make_settings, targets=TARGETS, ringme={"agents": RINGME_AGENTS}) as st:
        st.sandbox.configure(time_scale=1000.0)  # calls stay in flight: only the limit moves
        providers = Providers(st.settings, st.clock, pool)
        st.dispatcher.agents = providers.selector
        async with ringme_hook(providers, st.settings) as (fake, _):
            await st.post([f"+1415{2000000 + i:07d}" for i in range(30)])
            await st.dispatcher.tick()
            pace = st.dispatcher.paces["sales"]
            assert (pace.limit, pace.source) == (6, FALLBACK_NAME)  # no event yet: the static list

            await set_status(fake, ["136", "137", "138"], "available")
            await st.dispatcher.tick()
            pace = st.dispatcher.paces["sales"]
            assert (pace.limit, pace.in_flight, pace.source) == (6, 6, "ringme")

            await set_status(fake, ["137", "138"], "logged_out")  # agent-logout for two of three
            await st.dispatcher.tick()
            pace = st.dispatcher.paces["sales"]
            assert (pace.ready_agents, pace.limit, pace.agents) == (1, 2, ["alice"])
            assert pace.in_flight == 6  # nothing new was sent past the lower limit
            assert [d.event_type for d in fake.deliveries[-2:]] == ["agent-logout", "agent-logout"]

            await set_status(fake, ["137", "138"], "available")  # agent-login
            await st.dispatcher.tick()
            pace = st.dispatcher.paces["sales"]
            assert (pace.ready_agents, pace.limit) == (3, 6)
            states = await st.states()
            assert states.get("pending", 0) == 24


def test_the_daemon_serves_both_hooks_and_paces_from_ringme(daemon_env: dict[str, str], daemon: Any,
                                                           tmp_path: Path) -> None:
    """The wiring in dialer.daemon: hooks mounted, the selector in the Dispatcher."""
    from tests.conftest import wait_for

    cfg = tmp_path / "dialer.toml"
    cfg.write_text(
        '[targets.sales]\nqueue_id = "42"\nagent_mapping = "global"\nagents = ["alice", "bob", "carol"]\n'
        'calling_hours = "00:00-24:00"\nagents_source = "ringme"\n'
        '[ringme.agents]\n"136" = "alice"\n"137" = "bob"\n"138" = "carol"\n')
    daemon_env["DIALER_CONFIG"] = str(cfg)
    d = daemon.start()
    s = load_settings(None, environ=daemon_env)
    ringme, stringee = hooks.ringme_url(s, s.secret()), hooks.stringee_url(s, s.secret())
    with d.client() as c:
        sales = next(t for t in c.get("/v1/targets").json()["targets"] if t["name"] == "sales")
        assert (sales["agents_source"], sales["limit"]) == (FALLBACK_NAME, 6)
        r = httpx.get(ringme, params={"agent_id": "136", "agent_status": "available", "agent_type": "local"})
        assert r.status_code == 200 and r.json()["result"] == "changed"
        r = httpx.post(ringme, data={"agent_id": "137", "agent_status": "logged_out"})
        assert r.status_code == 200

        def paced() -> bool:
            t = next(t for t in c.get("/v1/targets").json()["targets"] if t["name"] == "sales")
            return bool(t["agents_source"] == "ringme" and t["ready_agents"] == 1 and t["limit"] == 2)

        wait_for(paced, 10, "pacing from ringme")
    assert httpx.get(ringme[:-4] + "0000", params={"agent_id": "1"}).status_code == 401
    r = httpx.post(stringee, json={"calls": [{"callId": "c1", "from": "84986776777", "to": "1"}]})
    assert r.status_code == 200
    assert r.json() == {"version": 2, "calls": [{"callId": "c1", "agents": [
        {"stringee_user_id": a, "routing_type": 1, "answer_timeout": 15} for a in ("alice", "bob", "carol")]}]}


async def test_by_default_pacing_follows_the_best_source_configured(caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §5: agent events (ringme), then agent status polling (PortSIP), else the list."""
    base = {"queue_id": "1", "agents": ["alice", "bob", "carol"]}
    s = load_settings(None, environ={}, overrides={
        "targets": {"both": base, "portsip_only": base, "none": base},
        "default_target": "both",
        "portsip": {"base_url": "http://pbx.invalid:8887",
                    "queues": {"both": {"queue": "8000"}, "portsip_only": {"queue": "8001"}}},
        "ringme": {"queues": {"both": "9000"}},
    })
    clock = FakeClock()
    ringme, portsip = Stub(silence=None), Stub(silence=30)
    sel = AgentSelector(s, clock, {"ringme": ringme, "portsip": portsip})
    assert (sel.chain("both"), sel.chain("portsip_only"), sel.chain("none")) == (["ringme", "portsip"],
                                                                                  ["portsip"], [])
    # nothing heard yet: the list, flagged, with why for each source
    with caplog.at_level(logging.INFO, logger="dialer.providers.agents"):
        assert await source(sel, "both") == FALLBACK_NAME and sel.fallback("both")
    assert caplog.records[-1].__dict__["reason"] == ("ringme: no word from it yet; "
                                                      "portsip: no word from it yet")
    portsip.heard, portsip.agents = clock.now(), {"bob"}
    assert await ready(sel, "both") == {"bob"} and await source(sel, "both") == "portsip"
    assert await source(sel, "portsip_only") == "portsip" and not sel.fallback("portsip_only")
    ringme.heard, ringme.agents = clock.now(), {"carol"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dialer.providers.agents"):
        assert await ready(sel, "both") == {"carol"} and await source(sel, "both") == "ringme"
    changed = [r for r in caplog.records if r.getMessage().startswith("agent source changed")]
    assert [(r.__dict__["was"], r.__dict__["source"]) for r in changed] == [("portsip", "ringme")]
    assert await source(sel, "portsip_only") == "portsip"  # ringme is not configured for it
    # a target with no source configured: its list, and that is no fallback
    assert await source(sel, "none") == "static" and not sel.fallback("none")
    # ringme's agent map is global: it speaks only for targets whose agents it maps
    mapped = s.model_copy(update={"ringme": s.ringme.model_copy(update={"queues": {}, "agents": {"7": "alice"}}),
                                  "targets": {**s.targets, "others": s.targets["none"].model_copy(
                                      update={"agents": ["zed"]})}})
    sel.settings = mapped
    assert (sel.chain("none"), sel.chain("others")) == (["ringme"], [])
    sel.settings = s
    # a named source is followed alone
    named = s.model_copy(update={"targets": {**s.targets, "both": s.targets["both"].model_copy(
        update={"agents_source": "portsip"})}})
    sel.settings = named
    assert await source(sel, "both") == "portsip"
