"""PortSIP: the client and the readiness poll against the fake PBX over real loopback HTTP,
the poll's result saved in the shared agent tables of a real PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.providers.agent_state import SourceView
from dialer.providers.portsip import PortSipClient, PortSipError, PortSipReadiness
from tests.fakes import FakePortSip

TOKEN = "portsip-test-token"


def settings(url: str, queues: dict[str, Any], **portsip: Any) -> Settings:
    targets = {name: {"queue_id": "42", "agents": ["alice", "bob", "carol"], "agents_source": "portsip"}
               for name in queues}
    return load_settings(None, environ={}, overrides={
        "targets": targets, "default_target": next(iter(targets)),
        "portsip": {"base_url": url, "queues": queues, **portsip},
    })


async def view(r: PortSipReadiness, target: str) -> SourceView:
    async with r.pool.acquire() as conn:
        return await r.view(conn, target)


@pytest.fixture
async def pbx() -> AsyncIterator[FakePortSip]:
    fake = FakePortSip(TOKEN)
    async with fake.running():
        yield fake


@pytest.fixture
async def client(pbx: FakePortSip) -> AsyncIterator[PortSipClient]:
    c = PortSipClient(pbx.url + "/api", TOKEN, timeout=5)
    yield c
    await c.close()


async def test_call_queues_are_read_page_by_page(pbx: FakePortSip, client: PortSipClient) -> None:
    for i in range(230):
        pbx.add_queue(f"queue {i}", f"{8000 + i}")
    queues = await client.call_queues()
    assert len(queues) == 230 and len({q["id"] for q in queues}) == 230
    pages = [(q["skip"], q["top"]) for m, p, q in pbx.requests if p == "/api/call_queues"]
    assert pages == [("0", "100"), ("100", "100"), ("200", "100")]


async def test_every_request_carries_the_bearer_token_and_a_bad_one_is_an_auth_error(
        pbx: FakePortSip) -> None:
    qid = pbx.add_queue("Sales", "8000", {"101": "READY"})
    bad = PortSipClient(pbx.url, "wrong-token", timeout=5)
    try:
        with pytest.raises(PortSipError) as err:
            await bad.queue_agents(qid)
        assert err.value.status == 401 and err.value.auth
        assert "refused the token" in err.value.message and "wrong-token" not in err.value.message
    finally:
        await bad.close()


async def test_agents_status_and_waiting_list(pbx: FakePortSip, client: PortSipClient) -> None:
    qid = pbx.add_queue("Sales", "8000", {"101": "READY", "102": "BREAK"})
    pbx.set_waiting(qid, 3)
    agents = await client.queue_agents(qid)
    assert [a["extension_number"] for a in agents] == ["101", "102"]
    assert "status" not in agents[0]  # the list has no status: one request per agent
    assert await client.agent_status(qid, "101") == "READY"
    assert await client.agent_status(qid, "102") == "BREAK"
    assert len(await client.waiting(qid)) == 3
    with pytest.raises(PortSipError) as err:
        await client.agent_status(qid, "999")
    assert err.value.status == 404


@pytest.mark.parametrize("ref", ["Sales", "8000", "by-id"])
async def test_a_queue_is_found_by_id_name_or_extension_number(pbx: FakePortSip, client: PortSipClient,
                                                              ref: str) -> None:
    pbx.add_queue("Support", "7000")
    qid = pbx.add_queue("Sales", "8000")
    assert await client.resolve_queue(qid if ref == "by-id" else ref) == qid
    with pytest.raises(PortSipError, match="no call queue"):
        await client.resolve_queue("Nope")


async def test_poll_maps_ready_agents_of_the_queue_to_the_target(pool: asyncpg.Pool, pbx: FakePortSip,
                                                                 client: PortSipClient) -> None:
    qid = pbx.add_queue("Sales", "8000", {"101": "READY", "102": "NOT_READY", "103": "READY",
                                          "104": "WRAP_UP", "105": "READY", "106": "LOGGED_OUT"})
    pbx.set_waiting(qid, 4)
    s = settings(pbx.url, {"sales": {"queue": "8000", "agents": {"101": "alice", "102": "bob",
                                                                  "103": "carol"}}})
    clock = FakeClock()
    r = PortSipReadiness(s, clock, client, pool)
    assert await view(r, "sales") == SourceView(None, None, None)
    assert await r.poll_once() == {"sales": True}
    # unmapped extensions keep their number
    assert await view(r, "sales") == SourceView({"alice", "carol", "105"}, clock.now(), 4)

    pbx.set_status(qid, "102", "READY")
    pbx.set_status(qid, "101", "LUNCH")
    pbx.set_waiting(qid, 0)
    clock.advance(5)
    await r.poll_once()
    assert await view(r, "sales") == SourceView({"bob", "carol", "105"}, clock.now(), 0)


async def test_two_targets_on_one_queue_poll_it_once(pool: asyncpg.Pool, pbx: FakePortSip, client: PortSipClient) -> None:
    pbx.add_queue("Sales", "8000", {"101": "READY"})
    s = settings(pbx.url, {"a": {"queue": "Sales", "agents": {"101": "alice"}},
                           "b": {"queue": "Sales", "agents": {"101": "al"}}})
    r = PortSipReadiness(s, FakeClock(), client, pool)
    await r.poll_once()
    assert (await view(r, "a")).ready == {"alice"} and (await view(r, "b")).ready == {"al"}
    assert pbx.count("/agents") == 1 and pbx.count("/waiting") == 1
    await r.poll_once()
    assert pbx.count("/api/call_queues") == 1  # the queue id is resolved once


async def test_poll_pages_through_a_large_queue(pool: asyncpg.Pool, pbx: FakePortSip, client: PortSipClient) -> None:
    agents = {str(1000 + i): ("READY" if i % 5 else "NOT_READY") for i in range(150)}
    qid = pbx.add_queue("Big", "9000", agents)
    pbx.set_waiting(qid, 130)
    r = PortSipReadiness(settings(pbx.url, {"sales": {"queue": qid}}), FakeClock(), client, pool)
    await r.poll_once()
    seen = await view(r, "sales")
    assert seen.ready == {e for e, st in agents.items() if st == "READY"} and seen.depth == 130
    skips = [q["skip"] for m, p, q in pbx.requests if p.endswith("/agents")]
    assert skips == ["0", "100"]


async def test_a_server_that_ignores_paging_is_read_once_not_forever(pbx: FakePortSip,
                                                                    client: PortSipClient) -> None:
    qid = pbx.add_queue("Big", "9000", {str(1000 + i): "READY" for i in range(150)})
    pbx.ignore_paging_on_agents = True
    agents = await client.queue_agents(qid)
    assert len(agents) == 150
    assert pbx.count("/agents") == 2  # the second page repeated the first: stop


async def test_a_failing_poll_keeps_the_last_view_and_logs_once(pool: asyncpg.Pool, pbx: FakePortSip, client: PortSipClient,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    pbx.add_queue("Sales", "8000", {"101": "READY"})
    clock = FakeClock()
    r = PortSipReadiness(settings(pbx.url, {"sales": {"queue": "8000", "agents": {"101": "alice"}}}),
                         clock, client, pool)
    await r.poll_once()
    heard = (await view(r, "sales")).heard_at
    pbx.fail_with = 503
    clock.advance(10)
    with caplog.at_level(logging.ERROR, logger="dialer.providers.portsip"):
        assert await r.poll_once() == {"sales": False}
        assert await r.poll_once() == {"sales": False}
    assert await view(r, "sales") == SourceView({"alice"}, heard, 0)
    assert [rec.getMessage() for rec in caplog.records] == ["PortSIP poll failed"]
    assert r.errors == 2
    pbx.fail_with = None
    await r.poll_once()
    assert (await view(r, "sales")).heard_at == clock.now()


async def test_a_refused_token_is_a_failed_poll(pool: asyncpg.Pool, pbx: FakePortSip) -> None:
    pbx.add_queue("Sales", "8000", {"101": "READY"})
    bad = PortSipClient(pbx.url, "expired", timeout=5)
    try:
        r = PortSipReadiness(settings(pbx.url, {"sales": {"queue": "8000"}}), FakeClock(), bad, pool)
        assert await r.poll_once() == {"sales": False}
        assert await view(r, "sales") == SourceView(None, None, None)
    finally:
        await bad.close()


async def test_an_unknown_queue_is_a_failed_poll_naming_it(pool: asyncpg.Pool, pbx: FakePortSip, client: PortSipClient,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    r = PortSipReadiness(settings(pbx.url, {"sales": {"queue": "Ghost"}}), FakeClock(), client, pool)
    with caplog.at_level(logging.ERROR, logger="dialer.providers.portsip"):
        assert await r.poll_once() == {"sales": False}
    assert "Ghost" in caplog.records[0].__dict__["error"]


async def test_request_observer_sees_every_request(pbx: FakePortSip) -> None:
    qid = pbx.add_queue("Sales", "8000", {"101": "READY"})
    seen: list[tuple[str, str, int | None]] = []
    c = PortSipClient(pbx.url, TOKEN, timeout=5, on_request=lambda p, e, s, _t: seen.append((p, e, s)))
    try:
        await c.agent_status(qid, "101")
        await c.waiting(qid)
    finally:
        await c.close()
    assert seen == [("portsip", "queue_agent", 200), ("portsip", "queue_waiting", 200)]


def test_config_needs_a_queue_and_base_url_for_a_portsip_target() -> None:
    from dialer.errors import ConfigError

    base = {"targets": {"sales": {"queue_id": "1", "agents_source": "portsip"}}}
    with pytest.raises(ConfigError, match=r"portsip\.base_url"):
        load_settings(None, environ={}, overrides=base)
    with pytest.raises(ConfigError, match=r"\[portsip.queues.sales\]"):
        load_settings(None, environ={}, overrides={**base, "portsip": {"base_url": "http://pbx:8887"}})
    with pytest.raises(ConfigError, match="DIALER_PORTSIP_TOKEN"):
        load_settings(None, environ={}, overrides={"portsip": {"token": "x"}})
    s = load_settings(None, environ={"DIALER_PORTSIP_TOKEN": "tok-123456"},
                      overrides={**base, "portsip": {"base_url": "http://pbx:8887",
                                                     "queues": {"sales": {"queue": "8000"}}}})
    assert s.portsip_token is not None and s.portsip_token.get_secret_value() == "tok-123456"
    assert s.redacted()["portsip_token"] == "***"


async def test_the_waiting_list_length_is_exported_as_queue_depth(pool: asyncpg.Pool, pbx: FakePortSip,
                                                                  client: PortSipClient) -> None:
    """SPEC §7: "/waiting length is exported as queue depth" (a target no provider reports
    on has no sample)."""
    from types import SimpleNamespace

    from dialer import metrics
    from dialer.http.context import AppContext
    from dialer.providers.agents import AgentSelector

    qid = pbx.add_queue("Sales", "8000", {"101": "READY"})
    pbx.set_waiting(qid, 3)
    s = settings(pbx.url, {"sales": {"queue": "8000", "agents": {"101": "alice"}}})
    s = s.model_copy(update={"targets": {**s.targets, "other": s.targets["sales"].model_copy()}})
    clock = FakeClock()
    r = PortSipReadiness(s, clock, client, pool)
    await r.poll_once()
    ctx = AppContext(settings=s, pool=pool, clock=clock)
    ctx.dispatcher = SimpleNamespace(agents=AgentSelector(s, clock, {"portsip": r}), breakers={})  # type: ignore[assignment]
    m = metrics.Metrics(s.targets)
    m.min_refresh_s = 0
    await m.refresh(ctx)
    body = (await m.exposition()).decode()
    assert 'dialer_provider_queue_depth{target="sales"} 3.0' in body
    assert 'dialer_provider_queue_depth{target="other"}' not in body
    pbx.set_waiting(qid, 0)
    clock.advance(5)
    await r.poll_once()
    await m.refresh(ctx)
    assert 'dialer_provider_queue_depth{target="sales"} 0.0' in (await m.exposition()).decode()
