"""Stringee: the JWT, queue sync against the fake ICC API, and the get_list_agents_url hook
answering the fake's routing request from the calls table (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from dialer.config import Settings
from dialer.http import hooks
from dialer.providers.stringee import (
    StringeeClient,
    StringeeError,
    StringeeRouter,
    candidates,
    decode_token,
    rest_token,
    sync_queue,
)
from dialer.store.queries import Q
from tests.fakes import FakeStringee, serve
from tests.fakes.stringee import ShapeError, check_agents_answer

SID, KEY = "SK_test_key_sid", "stringee-test-key-secret"
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

STRINGEE: dict[str, Any] = {
    "key_sid": SID, "routing_type": 1, "answer_timeout": 20, "targets": ["sales"],
    "agents": {"alice": {"user_id": "agent_alice", "phone_number": "84909992666", "routing_type": 2},
               "bob": {"user_id": "agent_bob", "answer_timeout": 10},
               "carol": {}},
    "queue": {"name": "Dialer callbacks", "record_calls": False, "wait_agent_answer_timeout": 15},
}
TARGETS: dict[str, Any] = {
    "sales": {"queue_id": "42", "agents": ["alice", "bob", "carol"], "default_region": "VN"},
    "other": {"queue_id": "43", "agents": ["zed"]},
}


def entry(name: str) -> dict[str, Any]:
    return {
        "alice": {"stringee_user_id": "agent_alice", "phone_number": "84909992666", "routing_type": 2,
                  "answer_timeout": 20},
        "bob": {"stringee_user_id": "agent_bob", "routing_type": 1, "answer_timeout": 10},
        "carol": {"stringee_user_id": "carol", "routing_type": 1, "answer_timeout": 20},
    }[name]


@contextlib.asynccontextmanager
async def icc() -> AsyncIterator[tuple[FakeStringee, StringeeClient]]:
    fake = FakeStringee({SID: KEY})
    async with fake.running() as url:
        client = StringeeClient(url, SID, KEY, timeout=5)
        try:
            yield fake, client
        finally:
            await client.close()


# -- JWT and the REST API ----------------------------------------------------------------------------
def test_rest_token_is_an_hs256_jwt_with_the_stringee_claims() -> None:
    token = rest_token(SID, KEY, now=1_700_000_000)
    payload = decode_token(token, KEY)
    assert payload == {"jti": f"{SID}-1700000000", "iss": SID, "exp": 1_700_003_600, "rest_api": True}
    assert decode_token(token, "another-secret") is None
    assert decode_token(token[:-2] + "xx", KEY) is None
    assert decode_token("not.a.jwt", KEY) is None


async def test_bad_or_expired_tokens_are_refused_with_their_message() -> None:
    async with icc() as (fake, _):
        wrong = StringeeClient(fake.url, SID, "not-the-secret", timeout=5)
        old = StringeeClient(fake.url, SID, KEY, timeout=5, now=lambda: time.time() - 7200)
        try:
            with pytest.raises(StringeeError, match="invalid access token") as err:
                await wrong.list_queues()
            assert err.value.status == 401 and err.value.r == 2
            with pytest.raises(StringeeError, match="expired"):
                await old.create_queue({"name": "q"})
        finally:
            await wrong.close()
            await old.close()
        assert fake.queues == {}


async def test_an_r_other_than_zero_is_an_error_with_its_message() -> None:
    async with icc() as (_, client):
        with pytest.raises(StringeeError, match="r=1: name is required") as err:
            await client.create_queue({"record_calls": True})
        assert err.value.status == 200 and err.value.r == 1
        with pytest.raises(StringeeError, match="Queue not found"):
            await client.update_queue("QU_NOPE", {"name": "x"})


async def test_find_queue_pages_through_the_list() -> None:
    async with icc() as (fake, client):
        for i in range(120):
            await client.create_queue({"name": f"queue {i}"})
        qid = await client.create_queue({"name": "the one"})
        assert await client.find_queue("the one") == qid
        assert await client.find_queue("absent") is None
        pages = [q["page"] for m, p, q in fake.requests if m == "GET"]
        assert pages == ["1", "2", "3", "1", "2", "3"]


async def test_sync_queue_creates_then_updates(make_settings: Callable[..., Settings]) -> None:
    async with icc() as (fake, client):
        s = make_settings(targets=TARGETS, stringee={**STRINGEE, "api_base": fake.url})
        hook = "https://dialer.example/hooks/stringee/agents/tok"
        assert await sync_queue(s, client, hook) == ("created", next(iter(fake.queues)))
        (qid, q), = fake.queues.items()
        assert q["name"] == "Dialer callbacks" and q["get_list_agents_url"] == hook
        assert q["record_calls"] == 0 and q["wait_agent_answer_timeout"] == 15
        assert fake.requests[-1] == ("POST", "/v1/queue", {
            "name": "Dialer callbacks", "record_calls": False, "wait_agent_answer_timeout": 15,
            "get_list_agents_url": hook})
        # again: found by name, updated in place
        s2 = make_settings(targets=TARGETS, stringee={**STRINGEE, "api_base": fake.url,
                                                      "queue": {**STRINGEE["queue"], "record_calls": True}})
        assert await sync_queue(s2, client, hook + "2") == ("updated", qid)
        assert len(fake.queues) == 1 and fake.queues[qid]["record_calls"] == 1
        assert fake.queues[qid]["get_list_agents_url"] == hook + "2"
        # pinned by id: a PUT straight away; an unknown id is Stringee's error
        s3 = make_settings(targets=TARGETS, stringee={**STRINGEE, "api_base": fake.url, "queue_id": qid})
        n = len(fake.requests)
        assert await sync_queue(s3, client, hook) == ("updated", qid)
        assert [m for m, _, _ in fake.requests[n:]] == ["PUT"]
        s4 = make_settings(targets=TARGETS, stringee={**STRINGEE, "api_base": fake.url, "queue_id": "QU_X"})
        with pytest.raises(StringeeError, match="Queue not found"):
            await sync_queue(s4, client, hook)


async def test_cli_sync_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from dialer import cli, logs

    monkeypatch.setattr(logs, "setup", lambda *a, **k: None)
    fake = FakeStringee({SID: KEY})
    async with fake.running() as url:
        cfg = tmp_path / "dialer.toml"
        cfg.write_text(f'[stringee]\napi_base = "{url}"\nkey_sid = "{SID}"\n[stringee.queue]\nname = "cli q"\n')
        for k in [k for k in list(__import__("os").environ) if k.startswith("DIALER_")]:
            monkeypatch.delenv(k)
        monkeypatch.setenv("DIALER_CONFIG", str(cfg))
        monkeypatch.setenv("DIALER_STATE_DIR", str(tmp_path / "var"))
        monkeypatch.setenv("DIALER_PUBLIC_URL", "https://dialer.example")
        assert await asyncio.to_thread(cli.main, ["stringee", "sync-queue"]) == 2  # no secret yet
        assert "DIALER_STRINGEE_KEY_SECRET" in capsys.readouterr().err
        monkeypatch.setenv("DIALER_STRINGEE_KEY_SECRET", KEY)
        assert await asyncio.to_thread(cli.main, ["stringee", "sync-queue"]) == 0
        out = capsys.readouterr().out
        (qid, q), = fake.queues.items()
        assert f"created Stringee queue 'cli q': {qid}" in out
        assert q["get_list_agents_url"].startswith("https://dialer.example/hooks/stringee/agents/stringee.queue.")
        assert await asyncio.to_thread(cli.main, ["stringee", "sync-queue"]) == 0
        assert "updated" in capsys.readouterr().out
        monkeypatch.setenv("DIALER_STRINGEE_KEY_SECRET", "wrong")
        assert await asyncio.to_thread(cli.main, ["stringee", "sync-queue"]) == 1
        assert "invalid access token" in capsys.readouterr().err
        assert await asyncio.to_thread(cli.main, ["hooks", "urls"]) == 0
        urls = capsys.readouterr().out
        assert "ringme_agent_event: https://dialer.example/hooks/ringme/agent-event/ringme.agents." in urls
        assert q["get_list_agents_url"] in urls


# -- the get_list_agents_url hook --------------------------------------------------------------------
async def add_call(conn: asyncpg.Connection, e164: str, agents: list[str] | None, state: str,
                   age_min: float, target: str = "sales") -> None:
    created = T0 - timedelta(minutes=age_min)
    ended = created + timedelta(minutes=1) if state in ("answered", "no_answer", "busy", "cancelled") else None
    await conn.execute(
        "INSERT INTO calls (batch_id, target, line, e164, agents, state, created_at, ended_at) "
        "VALUES (gen_random_uuid(), $1, 1, $2, $3, $4, $5, $6)",
        target, e164, agents, state, created, ended)


@contextlib.asynccontextmanager
async def routed(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[tuple[FakeStringee, str]]:
    secret = settings.secret()
    app = Starlette(routes=hooks.routes(secret, None, StringeeRouter(pool, settings)))
    fake = FakeStringee({SID: KEY})
    async with serve(app) as base, fake.running() as url:
        hook = base + hooks.stringee_url(settings, secret).removeprefix(settings.base_url)
        client = StringeeClient(url, SID, KEY, timeout=5)
        try:
            await sync_queue(settings, client, hook)
        finally:
            await client.close()
        yield fake, hook


async def test_each_call_gets_the_agents_of_its_lead(pool: asyncpg.Pool,
                                                     make_settings: Callable[..., Settings]) -> None:
    s = make_settings(targets=TARGETS, stringee=STRINGEE)
    async with pool.acquire() as conn:
        # A: a live call owned by alice, an older ended one by bob -> alice
        await add_call(conn, "+84986776777", ["bob"], "answered", 60)
        await add_call(conn, "+84986776777", ["alice"], "queued", 5)
        # B: only ended calls -> the most recent one's agents
        await add_call(conn, "+84919982888", ["carol"], "no_answer", 90)
        await add_call(conn, "+84919982888", ["bob"], "busy", 30)
        # C: a live lead with no agents -> the target's agents
        await add_call(conn, "+84912345678", None, "pending", 1)
        # D: newer live call owned by bob beats an older live one
        await add_call(conn, "+84987654321", ["alice"], "retry_wait", 50)
        await add_call(conn, "+84987654321", ["bob"], "assigned", 10)
        # E: only an intake duplicate row, and a call of a target the queue does not serve
        await add_call(conn, "+84911111111", ["bob"], "duplicate", 1)
        await add_call(conn, "+84922222222", ["zed"], "queued", 1, target="other")
    calls = [
        {"callId": "call-A", "from": "84986776777", "to": "842473082666"},
        {"callId": "call-B", "from": "+84919982888", "to": "842473082888"},
        {"callId": "call-C", "from": "0912345678", "to": "842473082888"},  # national format
        {"callId": "call-D", "from": "0084987654321", "to": "842473082888"},
        {"callId": "call-E", "from": "84911111111", "to": "842473082888"},
        {"callId": "call-F", "from": "84922222222", "to": "842473082888"},
        {"callId": "call-G", "from": "anonymous", "to": "842473082888"},
    ]
    async with routed(pool, s) as (fake, _):
        answer = await fake.route_calls(calls)
    everyone = [entry("alice"), entry("bob"), entry("carol")]
    assert answer == {"version": 2, "calls": [
        {"callId": "call-A", "agents": [entry("alice")]},
        {"callId": "call-B", "agents": [entry("bob")]},
        {"callId": "call-C", "agents": everyone},
        {"callId": "call-D", "agents": [entry("bob")]},
        {"callId": "call-E", "agents": everyone},  # no lead: every agent of the queue
        {"callId": "call-F", "agents": everyone},
        {"callId": "call-G", "agents": everyone},
    ]}


async def test_a_callback_an_agent_promised_goes_to_that_agent(pool: asyncpg.Pool,
                                                              make_settings: Callable[..., Settings]) -> None:
    """SPEC §7 "the agents that own the matching lead (from agents/ownership)": an
    agent-scheduled callback belongs to its agent alone until its grace is over."""
    s = make_settings(targets=TARGETS, stringee=STRINGEE)
    soon = datetime.now(UTC) + timedelta(hours=1)
    cases = [("+84986776777", "scheduled", soon, None),  # owned: within its grace
             ("+84919982888", "scheduled", soon, T0),  # released: the owner was not ready in time
             ("+84912345678", "scheduled", T0, None),  # its grace is over
             ("+84987654321", "answered", soon, None)]  # taken and ended: the lead is no one's now
    async with pool.acquire() as conn:
        for number, state, grace, released in cases:
            await add_call(conn, number, ["alice", "bob"], state, 1)
            cid = await conn.fetchval("SELECT max(id) FROM calls")
            await conn.execute(
                "INSERT INTO callbacks (call_id, lead_id, target, owner, asked_at, due_at, grace_until, "
                "released_at, source, from_call, created_at) VALUES ($1, $1, 'sales', 'carol', $2, $2, $3, $4, "
                "'disposition', $1, $2)", cid, T0, grace, released)
    calls = [{"callId": c, "from": n.removeprefix("+"), "to": "842473082666"}
             for c, (n, *_) in zip(("owned", "released", "grace-over", "ended"), cases, strict=True)]
    async with routed(pool, s) as (fake, _):
        answer = await fake.route_calls(calls)
    lead = [entry("alice"), entry("bob")]
    assert answer == {"version": 2, "calls": [
        {"callId": "owned", "agents": [entry("carol")]},  # the agent who promised it
        {"callId": "released", "agents": lead}, {"callId": "grace-over", "agents": lead},
        {"callId": "ended", "agents": lead},
    ]}


async def test_the_documented_sample_request(pool: asyncpg.Pool, make_settings: Callable[..., Settings]) -> None:
    s = make_settings(targets={"sales": {"queue_id": "42", "agents": ["agent_1", "agent_2"]}},
                      stringee={"routing_type": 2, "answer_timeout": 15,
                                "agents": {"agent_1": {"phone_number": "84909992666"},
                                           "agent_2": {"phone_number": "84909992666", "routing_type": 1,
                                                       "answer_timeout": 10}}})
    async with pool.acquire() as conn:
        await add_call(conn, "+84919982888", ["agent_1"], "queued", 1)
    secret = s.secret()
    app = Starlette(routes=hooks.routes(secret, None, StringeeRouter(pool, s)))
    async with serve(app) as base, httpx.AsyncClient() as http:
        url = base + hooks.stringee_url(s, secret).removeprefix(s.base_url)
        r = await http.post(url, json={
            "queueId": "queue_1", "projectId": 25,
            "calls": [{"callId": "call-vn-1-EHHC6JW1LT-1534145391502", "from": "84986776777",
                       "to": "842473082666"},
                      {"callId": "call-vn-1-EHHC6JW1LT-1534145391504", "from": "84919982888",
                       "to": "842473082888"}]})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        # the page's sample response, exactly
        assert r.json() == {"version": 2, "calls": [
            {"callId": "call-vn-1-EHHC6JW1LT-1534145391502", "agents": [
                {"stringee_user_id": "agent_1", "phone_number": "84909992666", "routing_type": 2,
                 "answer_timeout": 15},
                {"stringee_user_id": "agent_2", "phone_number": "84909992666", "routing_type": 1,
                 "answer_timeout": 10}]},
            {"callId": "call-vn-1-EHHC6JW1LT-1534145391504", "agents": [
                {"stringee_user_id": "agent_1", "phone_number": "84909992666", "routing_type": 2,
                 "answer_timeout": 15}]}]}
        # one call in a GET query works too
        r = await http.get(url, params={"callId": "c1", "from": "84919982888", "to": "1"})
        assert r.json()["calls"][0]["agents"][0]["stringee_user_id"] == "agent_1"
        # forged tokens, bad bodies
        assert (await http.post(base + "/hooks/stringee/agents/stringee.queue.00", json={})).status_code == 401
        assert (await http.post(base + "/hooks/stringee/agents/" + hooks.ringme_url(s, secret).rsplit("/", 1)[1],
                                json={"calls": []})).status_code == 401
        assert (await http.post(url, content=b"{nope")).status_code == 400
        assert (await http.post(url, json={"calls": [{"from": "1"}]})).status_code == 400
        assert (await http.post(url, json={"queueId": "q"})).status_code == 400


async def test_the_lookup_is_one_query_for_the_whole_request(pool: asyncpg.Pool,
                                                             make_settings: Callable[..., Settings]) -> None:
    s = make_settings(targets=TARGETS, stringee=STRINGEE)

    class Counting:
        def __init__(self) -> None:
            self.queries: list[str] = []

        @contextlib.asynccontextmanager
        async def acquire(self) -> AsyncIterator[Any]:
            async with pool.acquire() as conn:
                outer = self

                class Conn:
                    async def fetch(self, sql: str, *args: Any) -> Any:
                        outer.queries.append(sql)
                        return await conn.fetch(sql, *args)

                yield Conn()

    counting = Counting()
    router = StringeeRouter(counting, s)  # type: ignore[arg-type]
    answer = await router.answer({"calls": [{"callId": str(i), "from": f"8491{i:07d}"} for i in range(50)]})
    assert len(answer["calls"]) == 50
    assert counting.queries == [Q.stringee_lead_owners]


def test_numbers_are_read_in_the_forms_stringee_sends() -> None:
    assert candidates("84986776777", ["VN"])[0] == "+84986776777"
    assert "+84912345678" in candidates("0912345678", ["VN"])
    assert candidates("0084987654321", [])[0] == "+84987654321"
    assert candidates("", ["VN"]) == [] and candidates(None, ["VN"]) == []


def test_the_shape_check_catches_a_wrong_answer() -> None:
    good = {"version": 2, "calls": [{"callId": "a", "agents": [
        {"stringee_user_id": "u", "routing_type": 1, "answer_timeout": 15}]}]}
    check_agents_answer(good, ["a"])
    for bad in ({**good, "version": 1},
                {"version": 2, "calls": []},
                {"version": 2, "calls": [{"callId": "a", "agents": [{"stringee_user_id": "u", "routing_type": 3,
                                                                    "answer_timeout": 15}]}]},
                {"version": 2, "calls": [{"callId": "a", "agents": [{"routing_type": 1, "answer_timeout": 1}]}]}):
        with pytest.raises(ShapeError):
            check_agents_answer(bad, ["a"])
