"""A lead with several numbers through dispatch and callbacks: a re-dial goes to the next
usable number, the lead ends when one answers, results name the number reached."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from dialer.clock import FakeClock, SystemClock
from dialer.intake import dnc
from dialer.results.files import write_results_csv
from tests.stack import Stack, running_stack

TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0}
N1, N2, N3 = "+14155550101", "+14155550102", "+14155550103"


async def end_live_call(st: Stack, disposition: str) -> int:
    """Our own terminal callback for the one call out at the provider; its id."""
    async with st.pool.acquire() as conn:
        cid, chunk, number = await conn.fetchrow(
            "SELECT id, chunk_id, e164 FROM calls WHERE state IN ('queued', 'assigned', 'connected')")
        req = await conn.fetchval("SELECT request FROM chunks WHERE id = $1", chunk)
    url = req["body"]["customerData"]["terminalCallbackUrl"]
    async with httpx.AsyncClient() as http:
        r = await http.post(url, json={"event": "terminated", "disposition": disposition, "agent": "bob",
                                       "number": number, "customField10": f"dl{cid}"})
        assert r.status_code == 200
    return int(cid)


async def test_first_unanswered_second_dnc_third_answered(pool: asyncpg.Pool, make_settings: Any,
                                                          tmp_path: Path) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # our callbacks drive
        bid = await st.post([N1], number2=N2, number3=N3, external_id="crm-7",
                            webhook="http://127.0.0.1:9/hook")
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            first = await conn.fetchrow("SELECT id, e164, state FROM calls")
        assert first["e164"] == N1 and first["state"] in ("queued", "assigned")
        await dnc.add_numbers(pool, [N2], source="api", now=clock.now(), targets=st.settings.targets)  # the customer's second phone
        await end_live_call(st, "NO_ANSWER")
        async with pool.acquire() as conn:
            nxt = await conn.fetchrow("SELECT id, e164, state, attempt, not_before FROM calls WHERE attempt = 2")
            ev = await conn.fetchval("SELECT payload FROM call_events WHERE kind = 'recycled'")
        # no recycle rule needed: the third number, not tried yet, is dialed at once
        assert (nxt["e164"], nxt["state"]) == (N3, "retry_wait") and nxt["not_before"] == clock.now()
        assert ev["rule"] == "numbers" and ev["skipped"] == [{"number": N2, "reason": "on the do-not-call list"}]
        await st.dispatcher.tick()
        answered = await end_live_call(st, "ANSWERED")
        assert answered == nxt["id"]
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            calls = [dict(r) for r in await conn.fetch("SELECT e164, state FROM calls ORDER BY id")]
            assert await conn.fetchval("SELECT count(*) FROM chunks") == 2  # nothing else sent
            dest = tmp_path / "r.csv"
            await write_results_csv(conn, bid, dest)  # type: ignore[arg-type]
            hooks = [_payload(b)["body"] for b in await conn.fetch("SELECT body FROM webhook_outbox ORDER BY id")]
        assert calls == [{"e164": N1, "state": "no_answer"}, {"e164": N3, "state": "answered"}]
        assert [(h["number"], h["state"], h["will_retry"], h["number_reached"]) for h in hooks] == [
            (N1, "no_answer", True, None), (N3, "answered", False, N3)]
        assert hooks[1]["attempts_per_number"] == {N1: 1, N2: 0, N3: 1} and hooks[1]["numbers"] == [N1, N2, N3]
        rows = list(csv.DictReader(dest.open()))
        assert len(rows) == 1
        assert rows[0]["number"] == N3 and rows[0]["number_reached"] == N3 and rows[0]["state"] == "answered"
        assert rows[0]["attempts_per_number"] == f"{N1}:1;{N2}:0;{N3}:1"
        async with httpx.AsyncClient(base_url=st.settings.base_url,
                                     headers={"Authorization": "Bearer test-token-0123456789"}) as api:
            call = (await api.get(f"/v1/calls/{answered}")).json()
            page = (await api.get(f"/v1/batches/{bid}/calls")).json()["calls"]
        assert call["number"] == N3 and call["number_reached"] == N3
        assert call["numbers"] == [N1, N2, N3] and call["attempts_per_number"] == {N1: 1, N2: 0, N3: 1}
        assert [(c["number"], c["number_reached"], c["attempts_per_number"]) for c in page] == [
            (N1, None, {N1: 1, N2: 0, N3: 1}), (N3, N3, {N1: 1, N2: 0, N3: 1})]


async def test_every_number_used_up_ends_the_lead(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(SystemClock().now())
    target = {**TARGET, "recycle": {"busy": {"after_min": 30, "max": 1}}}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([N1], number2=N2)
        dialed = []
        for _ in range(5):
            await st.dispatcher.tick()
            if not (await st.states()).get("queued") and not (await st.states()).get("assigned"):
                clock.advance(31 * 60)
                await st.dispatcher.tick()
            if not ((await st.states()).keys() & {"queued", "assigned"}):
                break
            async with pool.acquire() as conn:
                dialed.append(await conn.fetchval("SELECT e164 FROM calls WHERE state IN ('queued', 'assigned')"))
            await end_live_call(st, "BUSY")
        # each number: its first attempt at once, then one re-dial (max 1) after 30 min, in turn
        assert dialed == [N1, N2, N1, N2]
        assert await st.states() == {"busy": 4}
        async with pool.acquire() as conn:
            ev = await conn.fetchrow("SELECT payload FROM call_events WHERE kind = 'numbers_exhausted'")
        assert ev is not None and ev["payload"]["attempts_per_number"] == {N1: 2, N2: 2}


def _payload(row: Any) -> Any:
    return {"body": orjson.loads(row["body"])}


@pytest.mark.parametrize("listed_by", ["api", "import"])
async def test_a_number_listed_while_its_attempt_waits_moves_the_lead_on(pool: asyncpg.Pool,
                                                                          make_settings: Any,
                                                                          listed_by: str) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([N1], number2=N2, number3=N3)
        await st.dispatcher.tick()
        await end_live_call(st, "NO_ANSWER")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT e164 FROM calls WHERE state = 'retry_wait'") == N2
        if listed_by == "api":
            await dnc.add_numbers(pool, [N2], source="api", now=clock.now(), targets=st.settings.targets)
        else:  # `dialer dnc import` of a file
            report = await dnc.import_bytes(pool, f"{N2}\n".encode(), region="US", source="import",
                                          now=clock.now(), targets=st.settings.targets)
            assert report.cancelled_calls == 1
        await st.dispatcher.tick()
        await end_live_call(st, "ANSWERED")
        async with pool.acquire() as conn:
            calls = [tuple(r) for r in await conn.fetch("SELECT e164, state, attempt FROM calls ORDER BY id")]
        assert calls == [(N1, "no_answer", 1), (N2, "cancelled", 2), (N3, "answered", 3)]


@pytest.mark.parametrize("other_ends", [False, True])
async def test_a_spare_number_another_lead_holds_is_skipped(pool: asyncpg.Pool, make_settings: Any,
                                                           other_ends: bool) -> None:
    """Lead A's second number is lead B's only one (B came in later: ingest checks numbers
    against calls, and A's spare was no call yet). When A goes on, that number has B's live
    call (or B's call ended within the dedupe window): A skips it rather than dial the
    customer twice."""
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([N1], number2=N2)
        await st.post([N2])  # lead B, another batch
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            a, b = await conn.fetch("SELECT id, e164, state FROM calls ORDER BY id")
            url = await conn.fetchval("SELECT request->'body'->'customerData'->>'terminalCallbackUrl' "
                                      "FROM chunks LIMIT 1")
        assert (a["e164"], b["e164"]) == (N1, N2) and {a["state"], b["state"]} <= {"queued", "assigned"}
        async with httpx.AsyncClient() as http:
            if other_ends:  # B's call ends first: N2 was called within the dedupe window
                r = await http.post(url, json={"event": "terminated", "disposition": "BUSY", "agent": "bob",
                                               "number": N2, "customField10": f"dl{b['id']}"})
                assert r.status_code == 200
            r = await http.post(url, json={"event": "terminated", "disposition": "NO_ANSWER", "agent": "bob",
                                           "number": N1, "customField10": f"dl{a['id']}"})
            assert r.status_code == 200
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            calls = [tuple(r) for r in await conn.fetch("SELECT e164, attempt FROM calls ORDER BY id")]
            ev = await conn.fetchval("SELECT payload FROM call_events WHERE kind = 'numbers_exhausted'")
        assert calls == [(N1, 1), (N2, 1)]  # no attempt of A on N2
        why = (f"number was called within the dedupe window (call {b['id']})" if other_ends
               else f"number already has a live call (call {b['id']})")
        assert ev["skipped"][0] == {"number": N2, "reason": why}
        assert ev["reason"].startswith("no number of the lead is usable")  # not "used up": N2 was never tried


async def test_a_number_listed_after_its_attempt_was_recorded_moves_the_lead_on_at_send(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """The attempt on N1 is already in a chunk when N1 is listed: the DNC cancel leaves it to
    the send-time re-check, which takes it out and, as for a waiting attempt, moves the lead
    on to N2; the result webhook of the taken-out call says a next call follows."""
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([N1], number2=N2, webhook="http://127.0.0.1:9/hook")
        assert await st.dispatcher.fill_target("sales") == 1  # recorded, not sent
        await dnc.add_numbers(pool, [N1], source="api", now=clock.now(), targets=st.settings.targets)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT state FROM calls WHERE e164 = $1", N1) == "submitting"
        assert await st.dispatcher.send_one()
        async with pool.acquire() as conn:
            calls = [tuple(r) for r in await conn.fetch("SELECT e164, state, attempt FROM calls ORDER BY id")]
            hooks = [orjson.loads(r["body"]) for r in await conn.fetch("SELECT body FROM webhook_outbox")]
        assert calls == [(N1, "cancelled", 1), (N2, "retry_wait", 2)]  # due at once: N2 was never tried
        assert [(h["number"], h["state"], h["will_retry"]) for h in hooks] == [(N1, "cancelled", True)]
