"""One result webhook per ended call, whatever ended it (SPEC §6): cancels, the do-not-call
list (API, import, a DNC disposition), expiry, and a several-number lead's cancelled attempt
that goes on to its next number."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from dialer.clock import FakeClock, SystemClock
from dialer.intake import dnc
from dialer.lifecycle import moves
from dialer.lifecycle.states import TERMINAL, State, sql_list
from tests.stack import running_stack

TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 1, "chunk_size": 10, "max_dispose_s": 0}
HOOK = "http://127.0.0.1:9/hook"
KEYS = {"event", "batch_id", "call_id", "number", "external_id", "state", "outcome", "attempt",
        "agent", "ended_at", "will_retry", "next_call_id", "number_reached"}
NA, NB, NC, N1, N2 = "+14155550111", "+14155550112", "+14155550113", "+14155550121", "+14155550122"


@pytest.mark.parametrize("listed_by", ["api", "import"])
async def test_calls_ended_without_a_callback_are_posted_once(pool: asyncpg.Pool, make_settings: Any,
                                                             listed_by: str) -> None:
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        a = await st.post([NA, NB], webhook=HOOK)
        b = await st.post([N1], number2=N2, webhook=HOOK)
        c = await st.post([NC], webhook=HOOK)
        await st.post(["+14155550131"])  # no webhook URL: nothing posted for it
        if listed_by == "api":
            await dnc.add_numbers(pool, [NA, N1], source="api", now=clock.now(), targets=st.settings.targets)
        else:
            report = await dnc.import_bytes(pool, f"{NA}\n{N1}\n".encode(), region="US", source="import",
                                          now=clock.now(), targets=st.settings.targets)
            assert report.cancelled_calls == 2
        async with pool.acquire() as conn, conn.transaction():
            await moves.cancel_batch(conn, a, clock.now(), "api")
            await moves.cancel_batch(conn, b, clock.now(), "api")
            expiring = await conn.fetchval("SELECT id FROM calls WHERE e164 = $1", NC)
            await moves.end_calls(conn, [expiring], "pending", State.EXPIRED, "expired", clock.now())
        async with pool.acquire() as conn:
            calls = {r["id"]: dict(r) for r in await conn.fetch(
                "SELECT id, e164, state, batch_id FROM calls WHERE state = ANY($1::text[])", sql_list(TERMINAL))}
            hooks = [(r["call_id"], orjson.loads(r["body"])) for r in await conn.fetch(
                "SELECT call_id, body FROM webhook_outbox ORDER BY id")]
    posted = [cid for cid, _ in hooks]
    assert sorted(posted) == sorted(i for i, x in calls.items() if str(x["batch_id"]) in (a, b, c))  # once each
    by_number = {h["number"]: h for _, h in hooks}
    assert set(by_number) == {NA, NB, N1, N2, NC}
    assert by_number.pop(NC)["state"] == "expired"
    assert all(h["state"] == "cancelled" and h["event"] == "call.ended" for h in by_number.values())
    assert set(by_number[NA]) == KEYS and by_number[NA]["will_retry"] is False
    assert by_number[NA]["number_reached"] is None and by_number[NA]["next_call_id"] is None
    # the several-number lead: its first number listed, it went on to the second (a next call)
    first, second = by_number[N1], by_number[N2]
    assert set(first) == KEYS | {"numbers", "attempts_per_number"}
    assert first["will_retry"] is True and first["next_call_id"] == second["call_id"]
    assert first["numbers"] == [N1, N2] and first["attempts_per_number"] == {N1: 0, N2: 0}
    assert second["will_retry"] is False and second["attempt"] == 2


async def test_a_dnc_disposition_moves_other_several_number_leads_on_and_posts_them(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """A customer says "do not call" on a call of one target: a lead of another target
    waiting on that number is cancelled, goes on to its next number (as when the API lists
    it), and its result webhook says a next call follows."""
    targets = {"renewals": {**TARGET, "queue_id": "43"}, "sales": TARGET}
    clock = FakeClock(SystemClock().now())
    async with running_stack(pool, make_settings, clock=clock, targets=targets) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # our callbacks drive
        await st.post([N1], target="renewals")
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            req = await conn.fetchval("SELECT request FROM chunks")
        await st.post([N1], number2=N2, webhook=HOOK)  # sales: waits on N1
        async with httpx.AsyncClient() as http:
            row = req["body"]["customerData"]["jsonData"][0]
            r = await http.post(req["body"]["customerData"]["terminalCallbackUrl"],
                                json={"event": "terminated", "disposition": "DO_NOT_CALL", **row})
            assert r.status_code == 200
        async with pool.acquire() as conn:
            sales = [tuple(r) for r in await conn.fetch(
                "SELECT id, e164, state, attempt FROM calls WHERE target = 'sales' ORDER BY id")]
            hooks = [orjson.loads(r["body"]) for r in await conn.fetch("SELECT body FROM webhook_outbox")]
    (first, n1, s1, a1), (second, n2, s2, a2) = sales
    assert (n1, s1, a1) == (N1, "cancelled", 1) and (n2, s2, a2) == (N2, "retry_wait", 2)
    assert len(hooks) == 1 and hooks[0]["call_id"] == first
    assert hooks[0]["will_retry"] is True and hooks[0]["next_call_id"] == second
