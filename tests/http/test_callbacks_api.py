"""``POST /v1/calls/{id}/schedule`` and ``GET /v1/callbacks``: a CRM schedules a callback,
every refusal is precise, and the list filters by target, owner and due time."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from dialer.clock import FakeClock
from tests.conftest import TOKEN
from tests.lifecycle.test_scheduled_callbacks import LEAD, TARGET, chicago, dial_first, end_current
from tests.stack import running_stack


def api(st: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=st.settings.base_url, headers={"Authorization": f"Bearer {TOKEN}"})


async def test_a_crm_schedules_a_callback_and_lists_it(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st, api(st) as http:
        await dial_first(st)
        r = await http.post("/v1/calls/1/schedule", json={"at": "2026-12-01T16:00"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "lead_live", r.text
        first = await end_current(st, "ANSWERED", agent="bob")
        r = await http.post(f"/v1/calls/{first}/schedule", json={"at": "2026-12-01T16:00"})  # Chicago time
        assert r.status_code == 201, r.text
        cb = r.json()
        assert cb["owner"] == "bob" and cb["from_call"] == first and cb["status"] == "upcoming"
        assert cb["due_at"] == chicago(1, 16).isoformat().replace("+00:00", "Z")
        r = await http.post(f"/v1/calls/{first}/schedule", json={"at": "2026-12-01T17:00"})
        assert r.status_code == 409 and r.json()["error"]["details"] == {"live_call": cb["call_id"]}
        for q, n in (("agent=bob", 1), ("agent=alice", 0), ("target=sales", 1),
                     ("from=2026-12-01T22:00:01Z", 0), ("from=2026-12-01T16:00-06:00", 1), ("to=2026-12-01T22:00:01Z", 1), ("open=true", 1)):
            r = await http.get(f"/v1/callbacks?{q}")
            assert r.status_code == 200 and len(r.json()["callbacks"]) == n, (q, r.text)
        clock.advance((chicago(1, 16) - clock.now()).total_seconds())
        assert (await http.get("/v1/callbacks")).json()["callbacks"][0]["status"] == "due"
        clock.advance(15 * 60)
        assert (await http.get("/v1/callbacks")).json()["callbacks"][0]["status"] == "overdue"
        scraped = (await http.get("/metrics")).text
        assert 'dialer_scheduled_callbacks{status="overdue",target="sales"} 1.0' in scraped
        assert 'dialer_scheduled_callbacks{status="due",target="sales"} 0.0' in scraped


async def test_every_refusal_says_precisely_why(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(chicago(1, 10))
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st, api(st) as http:
        await dial_first(st)
        first = await end_current(st, "ANSWERED", agent="bob")

        async def refused(body: Any, status: int, code: str, call: int = first) -> None:
            r = await http.post(f"/v1/calls/{call}/schedule", json=body)
            assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)

        await refused({"at": "2026-12-01T16:00"}, 404, "not_found", call=999)
        await refused({"at": "tomorrow"}, 422, "invalid")
        await refused({"at": "2026-13-01T16:00"}, 422, "invalid_time")
        await refused({"at": "2026-12-01T09:00"}, 422, "time_in_past")
        await refused({"at": "0001-01-01T00:00:00+23:59"}, 422, "invalid_time")  # before year 1 in UTC
        await refused({"at": "2026-12-01T16:00", "agent": "mallory"}, 422, "unknown_agent")
        await refused({"at": "2026-12-01T16:00", "extra": 1}, 422, "invalid")
        r = await http.post("/v1/dnc", json={"numbers": [LEAD]})
        assert r.status_code == 200
        await refused({"at": "2026-12-01T16:00"}, 409, "dnc")
        for bad in ("yesterday", "2026-12-01T16:00"):
            r = await http.get(f"/v1/callbacks?from={bad}")
            assert r.status_code == 422, bad
        r = await http.get("/v1/callbacks?target=other")
        assert r.status_code == 422 and "unknown target" in r.json()["error"]["message"]
