"""Callbacks over real HTTP: auth, lenient bodies, forward-only states, recycle, webhooks."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dialer.clock import FakeClock, SystemClock
from dialer.lifecycle.ended import webhook_body
from dialer.lifecycle.states import TERMINAL
from tests.conftest import await_for
from tests.stack import SandboxConfig, free_port, running_stack, serve

TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0}


def numbers(n: int, start: int = 2000000) -> list[str]:
    return [f"+1415{start + i:07d}" for i in range(n)]


async def queued_chunk(st: Any, n: int = 2, **target: Any) -> tuple[str, list[dict[str, Any]]]:
    """Post n leads and send them with the sandbox too slow to answer: our own callbacks drive."""
    st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
    await st.post(numbers(n))
    await st.dispatcher.tick()
    async with st.pool.acquire() as conn:
        req = await conn.fetchval("SELECT request FROM chunks ORDER BY id LIMIT 1")
    return req["body"]["customerData"]["terminalCallbackUrl"], req["body"]["customerData"]["jsonData"]


async def test_forged_tokens_are_401_and_nothing_is_stored(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets={"sales": TARGET}) as st:
        url, rows = await queued_chunk(st)
        base, token = url.rsplit("/", 1)
        kind, ident, mac = token.split(".")
        forged = [f"{kind}.{ident}.{'0' * 32}", f"{kind}.{int(ident) + 1}.{mac}", "chunk.1", "nonsense", f"hook.{ident}.{mac}"]
        await await_for(lambda: _settled(st), 10, "connect callbacks")
        states = await st.states()
        async with httpx.AsyncClient() as http, pool.acquire() as conn:
            before = await conn.fetchval("SELECT count(*) FROM call_events")
            for t in forged:
                r = await http.post(f"{base}/{t}", json={"event": "terminated", "disposition": "ANSWERED", **rows[0]})
                assert r.status_code == 401, t
            for unsigned in (base, base + "/"):  # no token at all
                r = await http.post(unsigned, json={"event": "terminated", "disposition": "ANSWERED", **rows[0]})
                assert r.status_code == 401, unsigned
            assert await conn.fetchval("SELECT count(*) FROM call_events") == before
            assert (await st.states()) == states


async def _settled(st: Any) -> bool:
    return (await st.states()) == {"assigned": 2}


async def test_json_and_form_bodies_duplicates_and_late_callbacks(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets={"sales": TARGET}) as st:
        url, rows = await queued_chunk(st)
        connect = url.replace("/terminal/", "/connect/")
        a, b = rows
        async with httpx.AsyncClient() as http:
            # form-encoded connect, snake_case keys
            r = await http.post(connect, data={"event": "agent_assigned", "agent": "bob", "custom_field10": a["customField10"]})
            assert r.status_code == 200
            # terminal in camelCase JSON, twice (a duplicate)
            body = {"event": "terminated", "disposition": "ANSWERED", "agent": "bob", "talkTime": 42, **a}
            assert (await http.post(url, json=body)).status_code == 200
            assert (await http.post(url, json=body)).status_code == 200
            # a late connect after the end must not move the call back
            assert (await http.post(connect, json={"event": "customer_answered", **a})).status_code == 200
            # matched by chunk + number when no reference is present; an unknown word → failed
            r = await http.post(url, json={"Event": "terminated", "Status": "WEIRD_CODE", "number": b["number"]})
            assert r.status_code == 200
        async with pool.acquire() as conn:
            rows_db = {r["e164"]: r for r in await conn.fetch("SELECT e164, state, outcome, agent FROM calls")}
            # ours only: the sandbox's own connect callbacks carry a callId
            events = await conn.fetch("SELECT kind, from_state, to_state, applied FROM call_events "
                                      "WHERE kind LIKE 'callback_%' AND NOT (payload->'body' ? 'callId') "
                                      "ORDER BY id")
        assert rows_db[a["number"]]["state"] == "answered" and rows_db[a["number"]]["agent"] == "bob"
        assert rows_db[b["number"]]["state"] == "failed" and rows_db[b["number"]]["outcome"] == "WEIRD_CODE"
        applied = [(e["kind"], e["to_state"], e["applied"]) for e in events]
        assert applied == [
            ("callback_connect", "assigned", False),  # the sandbox had already assigned it
            ("callback_terminal", "answered", True),
            ("callback_terminal", "answered", False),  # duplicate: recorded, not applied
            ("callback_connect", "connected", False),  # late: recorded, not applied
            ("callback_terminal", "failed", True),
        ]
        # metrics-style accounting: each call ends once
        ends = [x for x in st.applied if x.terminal]
        assert len(ends) == 2


async def test_garbage_body_is_recorded_and_unmatched_is_acknowledged(pool: asyncpg.Pool, make_settings: Any) -> None:
    async with running_stack(pool, make_settings, targets={"sales": TARGET}) as st:
        url, _ = await queued_chunk(st)
        async with httpx.AsyncClient() as http:
            r = await http.post(url, content=b"\x00\x01 not json", headers={"content-type": "application/json"})
            assert r.status_code == 200  # kept as bytes: a resent body would read no better
            r = await http.post(url, json={"event": "terminated", "number": "+19999999999"})
            assert r.status_code == 200
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT call_id, applied, payload FROM call_events "
                                    "WHERE kind = 'callback_terminal' ORDER BY id")
        assert [(r["call_id"], r["applied"], r["payload"]["note"]) for r in rows] == [
            (None, False, "body could not be read"), (None, False, "no matching call")]


async def test_thousand_lead_batch_with_duplicate_and_late_callbacks_ends_exactly(pool: asyncpg.Pool,
                                                                                  make_settings: Any) -> None:
    target = {**TARGET, "calls_per_agent": 200, "chunk_size": 250, "max_retries": 1, "retry_interval_min": 1}
    cfg = SandboxConfig(time_scale=0.0005, seed=11, ring_s=(1, 2), talk_s=(2, 5), default_max_dispose_s=0,
                        duplicate_callback_rate=0.2, late_callback_rate=0.1, agents=["alice", "bob", "carol"])
    async with running_stack(pool, make_settings, targets={"sales": target}, sandbox_config=cfg) as st:
        bid = await st.post(numbers(1000))

        async def ended() -> bool:
            await st.dispatcher.tick()
            states = await st.states()
            return sum(n for s, n in states.items() if s in TERMINAL) == 1000

        await await_for(ended, 120, "all 1000 calls ended")
        states = await st.states()
        sandbox_outcomes = st.sandbox.stats()
        async with pool.acquire() as conn:
            by_outcome = dict(await conn.fetch("SELECT outcome, count(*) FROM calls WHERE batch_id = $1 "
                                               "GROUP BY outcome", __import__("uuid").UUID(bid)))
            not_applied = await conn.fetchval("SELECT count(*) FROM call_events WHERE NOT applied")
        assert sum(states.values()) == 1000
        assert sum(by_outcome.values()) == 1000
        assert not_applied > 0  # duplicates and late callbacks were recorded, not applied
        ends = [x for x in st.applied if x.terminal]
        assert len(ends) == 1000  # each call counted once
        refs = st.sandbox.submissions_by_ref("customField10")
        assert len(refs) == 1000 and set(refs.values()) == {1}
        assert sandbox_outcomes is not None


async def test_recycle_waits_after_min_then_redials_up_to_max(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    target = {**TARGET, "recycle": {"no_answer": {"after_min": 120, "max": 2}}}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        url, rows = await queued_chunk(st, n=1)
        lead = rows[0]

        async def end_current(disposition: str) -> None:
            async with pool.acquire() as conn:
                cid, chunk = await conn.fetchrow("SELECT id, chunk_id FROM calls WHERE state IN ('queued', 'assigned')")
                tok = await conn.fetchval("SELECT token FROM chunks WHERE id = $1", chunk)
            async with httpx.AsyncClient() as http:
                r = await http.post(f"{url.rsplit('/', 1)[0]}/{tok}",
                                    json={"event": "terminated", "disposition": disposition,
                                          "number": lead["number"], "customField10": f"dl{cid}"})
                assert r.status_code == 200

        for attempt in (1, 2, 3):
            await end_current("NO_ANSWER")
            await st.dispatcher.tick()
            states = await st.states()
            if attempt == 3:
                assert states == {"no_answer": 3}  # max 2 re-dials: the third no-answer is final
                break
            assert states == {"no_answer": attempt, "retry_wait": 1}
            clock.advance(119 * 60)
            await st.dispatcher.tick()
            assert (await st.states()).get("retry_wait") == 1  # not yet
            clock.advance(61)
            await st.dispatcher.tick()
            now_states = await st.states()  # one read: the call moves on while we look
            assert now_states.get("queued", 0) + now_states.get("assigned", 0) == 1
        async with pool.acquire() as conn:
            attempts = [r["attempt"] for r in await conn.fetch("SELECT attempt FROM calls ORDER BY id")]
            ev = await conn.fetchrow("SELECT payload FROM call_events WHERE kind = 'recycled' ORDER BY id LIMIT 1")
        assert attempts == [1, 2, 3]
        assert ev["payload"]["rule"] == "recycle.no_answer" and ev["payload"]["after_min"] == 120


async def test_dnc_disposition_lists_the_number_and_cancels_its_other_calls(pool: asyncpg.Pool,
                                                                             make_settings: Any) -> None:
    targets = {"sales": TARGET, "renewals": {**TARGET, "queue_id": "43"}}
    async with running_stack(pool, make_settings, targets=targets) as st:
        url, rows = await queued_chunk(st, n=1)
        await st.post([rows[0]["number"]], target="renewals")  # the same person, another target
        async with httpx.AsyncClient() as http:
            r = await http.post(url, json={"event": "terminated", "disposition": "DO_NOT_CALL", **rows[0]})
            assert r.status_code == 200
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM dnc WHERE e164 = $1", rows[0]["number"]) == 1
            other = await conn.fetchrow("SELECT state, reason FROM calls WHERE target = 'renewals'")
        assert dict(other) == {"state": "cancelled", "reason": "dnc"}


async def test_result_webhooks_are_signed_and_retried(pool: asyncpg.Pool, make_settings: Any) -> None:
    received: list[tuple[bytes, str]] = []
    fail_first = [2]

    async def hook(request: Request) -> Response:
        body = await request.body()
        if fail_first[0] > 0:
            fail_first[0] -= 1
            return Response(status_code=503)
        received.append((body, request.headers["x-dialer-signature"]))
        return Response(status_code=204)

    port = free_port()
    clock = FakeClock(SystemClock().now())
    async with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), port), \
            running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        bid = await st.post(numbers(3), webhook=f"http://127.0.0.1:{port}/hook")
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            req = await conn.fetchval("SELECT request FROM chunks")
        url = req["body"]["customerData"]["terminalCallbackUrl"]
        async with httpx.AsyncClient() as http:
            for i, row in enumerate(req["body"]["customerData"]["jsonData"]):
                await http.post(url, json={"event": "terminated", "disposition": "ANSWERED" if i == 0 else "BUSY",
                                           "agent": "bob", **row})
        for _ in range(6):
            await st.webhooks.deliver_due()
            clock.advance(120)
        assert len(received) == 3
        secret = st.secret
        for body, sig in received:
            assert sig == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            data = orjson.loads(body)
            assert data["event"] == "call.ended"
            assert set(data) == ONE_NUMBER_KEYS  # the callback batch's body (SQL) has webhook_body's keys
            assert data["number_reached"] == (data["number"] if data["state"] == "answered" else None)
        assert sorted(orjson.loads(b)["state"] for b, _ in received) == ["answered", "busy", "busy"]
        assert sorted(orjson.loads(b)["number"] for b, _ in received) == numbers(3)
        # the batch is done once every call ended
        assert [str(b) for b in await st.completion.check()] == [bid]
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT state FROM batches") == "done"
            assert await conn.fetchval("SELECT count(*) FROM webhook_outbox WHERE state = 'delivered'") == 3


async def test_webhooks_give_up_after_24_hours(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO webhook_outbox (batch_id, call_id, url, body, next_attempt_at, created_at) "
                               "VALUES (gen_random_uuid(), 1, 'http://127.0.0.1:9/none', '{}', $1, $1)", clock.now())
        tries = 0
        while tries < 100:
            tries += 1
            await st.webhooks.deliver_due()
            clock.advance(timedelta(hours=1).total_seconds())
            async with pool.acquire() as conn:
                state = await conn.fetchval("SELECT state FROM webhook_outbox")
            if state != "pending":
                break
        assert state == "failed" and 5 < tries <= 26


ONE_NUMBER_KEYS = {"event", "batch_id", "call_id", "number", "external_id", "state", "outcome", "attempt",
                   "agent", "ended_at", "will_retry", "next_call_id", "number_reached"}


def test_a_one_number_webhook_names_the_number_reached_only_when_answered() -> None:
    row = {"batch_id": "b", "id": 7, "e164": "+14155550100", "external_id": None, "state": "answered",
           "outcome": "answered", "attempt": 1, "agent": "bob", "ended_at": datetime(2026, 12, 6, tzinfo=UTC),
           "numbers": None}
    body = orjson.loads(webhook_body(row, None))
    assert set(body) == ONE_NUMBER_KEYS and body["number_reached"] == "+14155550100"
    for state in ("no_answer", "busy", "unreachable", "cancelled"):
        body = orjson.loads(webhook_body({**row, "state": state}, None))
        assert body["number_reached"] is None, state
