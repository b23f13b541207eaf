"""Compliance: regional windows, holidays, DST, attempt caps across targets and instances."""

from __future__ import annotations

import resource
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import load_settings
from dialer.dispatch import compliance
from dialer.intake import dnc
from tests.stack import running_stack


def rules(**compliance_cfg: Any) -> tuple[compliance.Rules, Any]:
    s = load_settings(None, environ={}, overrides={
        "compliance": compliance_cfg,
        "targets": {"sales": {"queue_id": "1", "calling_hours": "09:00-20:00"}},
    })
    return compliance.Rules(s), s.targets["sales"]


def test_region_from_number_field_and_zone() -> None:
    assert compliance.region_of("+16025550100", None, None) == "US-AZ"
    assert compliance.region_of("+14155550100", None, None) == "US-CA"
    assert compliance.region_of("+4930123456", None, None) == "DE"
    assert compliance.region_of("+18005550100", None, None) == "US"  # toll-free: no state
    assert compliance.region_of("+18005550100", {"region": "us-tx"}, None) == "US-TX"


def test_dst_switch_arizona_vs_colorado() -> None:
    r, t = rules(calling_hours_by_region={"US-AZ": "09:00-20:00", "US-CO": "09:00-20:00"})
    az, co = "+16025550100", "+13035550100"
    before = datetime(2027, 3, 12, 15, 30, tzinfo=UTC)  # both on UTC-7: 08:30 local
    after = datetime(2027, 3, 15, 15, 30, tzinfo=UTC)  # Denver is on MDT (UTC-6): 09:30; Phoenix 08:30
    assert r.check("sales", t, az, None, None, before) is not None
    assert r.check("sales", t, co, None, None, before) is not None
    assert r.check("sales", t, co, None, None, after) is None
    hold = r.check("sales", t, az, None, None, after)
    assert hold is not None and hold.rule == "calling_hours_by_region.US-AZ"
    assert hold.until == datetime(2027, 3, 15, 16, 0, tzinfo=UTC)  # 09:00 MST


def test_override_wins_and_unknown_region_takes_the_strictest() -> None:
    r, t = rules(calling_hours_by_region={"US-TX": "09:00-21:00", "US-CA": "10:00-19:00"})
    tx = "+12145550100"
    late = datetime(2026, 6, 2, 1, 30, tzinfo=UTC)  # 20:30 CDT in Dallas: TX allows until 21:00
    assert r.check("sales", t, tx, None, None, late) is None
    # a US number with no known state: every US window that could apply → 10:00-19:00
    tollfree = "+18885550100"
    win, rule = r.window_for(t, compliance.region_of(tollfree, None, None))
    assert win is not None and (win.start.hour, win.end.hour) == (10, 19) and "strictest" in rule


def test_an_unrecognised_region_takes_the_strictest_window() -> None:
    r, t = rules(calling_hours_by_region={"US-TX": "09:00-21:00", "US-CA": "10:00-19:00"})
    for value in ("Narnia", "TX", "US-ZZ9Z", "XX-1"):
        region = compliance.region_of("+12145550100", {"region": value}, None)
        assert not compliance.known_region(region or "")
        win, rule = r.window_for(t, region)
        assert win is not None and (win.start.hour, win.end.hour) == (10, 19)
        assert rule == "calling_hours_by_region.*(strictest: unrecognised region)"
    # recognised codes keep their own answer
    assert r.window_for(t, "US-TX")[1] == "calling_hours_by_region.US-TX"
    assert r.window_for(t, "FR")[1] == "calling_hours"  # a country with no override: the target's own
    # a state we know with no window of its own: the target's (SPEC §9: region windows win
    # over calling_hours where they apply; strictest only when the state is unknown)
    assert r.window_for(t, "US-NY")[1] == "calling_hours"
    assert "US-*" in r.window_for(t, "US")[1]
    r2, _ = rules(calling_hours_by_region={"US": "09:00-20:00", "US-TX": "09:00-21:00"})
    assert r2.window_for(t, "US-NY")[1] == "calling_hours_by_region.US"  # its country's


def test_a_known_state_without_its_own_window_keeps_the_targets_hours() -> None:
    r, t = rules(calling_hours_by_region={"US-TX": "10:00-19:00"})  # the target's: 09:00-20:00
    sf, dallas = "+14155550100", "+12145550100"  # US-CA (no window of its own), US-TX
    assert compliance.region_of(sf, None, None) == "US-CA"
    morning = datetime(2026, 6, 2, 16, 30, tzinfo=UTC)  # 09:30 in San Francisco, 11:30 in Dallas
    assert r.check("sales", t, sf, None, None, morning) is None  # Texas' 10:00 does not reach California
    evening = datetime(2026, 6, 3, 0, 30, tzinfo=UTC)  # 17:30 in San Francisco, 19:30 in Dallas
    assert r.check("sales", t, sf, None, None, evening) is None
    hold = r.check("sales", t, dallas, None, None, evening)
    assert hold is not None and hold.rule == "calling_hours_by_region.US-TX"


def test_holidays_from_dates_and_ics(tmp_path: Path) -> None:
    ics = tmp_path / "h.ics"
    ics.write_text("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:1\r\n"
                   "DTSTAMP:20260101T000000Z\r\nDTSTART;VALUE=DATE:20270101\r\nSUMMARY:New Year\r\n"
                   "END:VEVENT\r\nEND:VCALENDAR\r\n")
    r, t = rules(holidays=["2026-12-25"], holidays_ics=str(ics))
    sf = "+14155550100"
    xmas = datetime(2026, 12, 25, 18, 0, tzinfo=UTC)  # 10:00 in San Francisco on Christmas
    hold = r.check("sales", t, sf, None, None, xmas)
    assert hold is not None and hold.rule == "holidays"
    assert hold.until == datetime(2026, 12, 26, 17, 0, tzinfo=UTC)  # 09:00 PST the next day
    ny = r.check("sales", t, sf, None, None, datetime(2027, 1, 1, 18, 0, tzinfo=UTC))
    assert ny is not None and ny.rule == "holidays"


TARGET = {"agent_mapping": "global", "agents": ["alice", "bob", "carol"], "calling_hours": "00:00-24:00",
          "calls_per_agent": 5, "chunk_size": 10, "max_dispose_s": 0, "dedupe_window_h": 0}


async def test_caps_hold_across_targets_and_two_instances(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    targets = {f"t{i}": {**TARGET, "queue_id": str(i)} for i in range(4)}
    caps = {"max_attempts_per_number": [{"count": 2, "window_h": 24}]}
    async with running_stack(pool, make_settings, clock=clock, targets=targets, default_target="t0",
                             compliance=caps) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        number = "+14155550100"
        for i in range(4):
            await st.post([number], target=f"t{i}")
        other = st.another_dispatcher("test-2")
        async with anyio.create_task_group() as tg:
            tg.start_soon(st.dispatcher.tick)
            tg.start_soon(other.tick)
        async with pool.acquire() as conn:
            sent = await conn.fetchval("SELECT count(*) FROM calls WHERE submitted_at IS NOT NULL")
            held = await conn.fetch("SELECT not_before FROM calls WHERE state = 'scheduled'")
            ev = await conn.fetchrow("SELECT payload FROM call_events WHERE kind = 'hold' LIMIT 1")
        assert sent == 2 and len(held) == 2
        assert ev["payload"]["rule"] == "max_attempts_per_number" and ev["payload"]["count"] == 2
        assert set(st.sandbox.dials_by_number().values()) <= {1, 2}
        clock.advance(timedelta(hours=24, minutes=1).total_seconds())
        for d in (st.dispatcher, other):
            await d.tick()
        async with pool.acquire() as conn:
            sent = await conn.fetchval("SELECT count(*) FROM calls WHERE submitted_at IS NOT NULL")
        assert sent == 4


async def test_the_providers_own_redials_count_against_the_caps(pool: asyncpg.Pool, make_settings: Any) -> None:
    """SPEC §9: caps count every attempt to a number. Ryng re-dials an unreachable or busy
    customer up to maxRetries times within one request; its terminal callback says how often
    (``attempts``), and those dials count too."""
    from dialer.dispatch.chunker import call_ref
    from dialer.lifecycle import payload

    t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    clock = FakeClock(t0)
    target = {**TARGET, "queue_id": "1", "max_retries": 2,
              "recycle": {"no_answer": {"after_min": 60, "max": 5}}}
    caps = {"max_attempts_per_number": [{"count": 3, "window_h": 24}]}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target},
                             compliance=caps) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # our callbacks drive
        number = "+14155550100"
        await st.post([number])
        await st.dispatcher.tick()
        call_id, chunk_id = await pool.fetchrow("SELECT id, chunk_id FROM calls")
        clock.advance(3600)  # Ryng's two retries, 30 min apart
        cb = payload.read({"event": "terminated", "disposition": "NO_ANSWER", "attempts": 3,
                           "customField10": call_ref(call_id)})
        assert (await st.service.store(chunk_id, "terminal", cb)).result == "applied"
        assert await pool.fetchval("SELECT dials FROM calls WHERE id = $1", call_id) == 3
        clock.advance(3601)  # the re-dial is due: three dials in the window already
        await st.dispatcher.tick()
        redial = await pool.fetchrow("SELECT id, state, submitted_at FROM calls WHERE attempt = 2")
        assert (redial["state"], redial["submitted_at"]) == ("capped", None)  # a re-dial over a cap
        ev = await pool.fetchrow("SELECT payload FROM call_events WHERE call_id = $1 "
                                 "AND payload->>'rule' = 'max_attempts_per_number'", redial["id"])
        assert ev is not None, "the capped re-dial names the rule"
        assert ev["payload"]["attempts_in_window"] == 3


async def test_a_lead_with_an_unrecognised_region_waits_for_the_strictest_window(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    # 20:30 in Dallas: inside the target's hours and Texas's, outside California's 10:00-19:00
    clock = FakeClock(datetime(2026, 6, 2, 1, 30, tzinfo=UTC))
    target = {**TARGET, "queue_id": "1", "calling_hours": "08:00-21:00"}
    regions = {"calling_hours_by_region": {"US-TX": "09:00-21:00", "US-CA": "10:00-19:00"}}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target},
                             compliance=regions) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post(["+12145550100"], region="US-TX")
        await st.post(["+12145550101"], region="Narnia")
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            sent = await conn.fetchval("SELECT e164 FROM calls WHERE submitted_at IS NOT NULL")
            held = await conn.fetchrow("SELECT c.e164, c.state, e.payload FROM calls c "
                                       "JOIN call_events e ON e.call_id = c.id AND e.kind = 'hold'")
        assert sent == "+12145550100"  # Texas's own window allows it
        assert (held["e164"], held["state"]) == ("+12145550101", "scheduled")
        assert held["payload"]["rule"] == "calling_hours_by_region.*(strictest: unrecognised region)"
        assert held["payload"]["region"] == "NARNIA" and held["payload"]["window"] == "10:00-19:00"
        opens = datetime(2026, 6, 2, 15, 0, tzinfo=UTC)  # 10:00 CDT the next morning
        assert held["payload"]["until"] == opens.isoformat()
        clock.advance((opens - clock.now()).total_seconds() + 60)
        await st.dispatcher.tick()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM calls WHERE submitted_at IS NOT NULL") == 2


async def test_dnc_import_streams_flat(pool: asyncpg.Pool, tmp_path: Path) -> None:
    n = 1_000_000 if __import__("os").environ.get("DIALER_SLOW") else 200_000
    path = tmp_path / "registry.txt"
    with path.open("w") as f:
        f.write("phone\n")
        for i in range(n):
            f.write(f"{[201, 212, 415, 312][i % 4]}{2000000 + i // 4:07d}\n")
        f.write("not-a-number\n4155550100,2027-01-01\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = await dnc.import_file(pool, path, region="US", source="registry",
                                   now=datetime(2026, 6, 1, tzinfo=UTC), targets={})
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert report.added == n + 1 and report.invalid == 1
    assert report.invalid_samples[0]["line"] == n + 2
    assert grew_mb < 100  # the file is never held: chunks of 50k lines
    again = await dnc.import_bytes(pool, b"4155550100\n", region="US", source="x",
                                   now=datetime(2026, 6, 1, tzinfo=UTC), targets={})
    assert again.updated == 1 and again.added == 0


@pytest.mark.parametrize("body", [b"+14155550100\n(415) 555-0101\nbad\n"])
async def test_dnc_file_over_the_api(pool: asyncpg.Pool, make_settings: Any, body: bytes) -> None:
    import httpx

    from dialer.http.app import create_app
    from dialer.http.context import AppContext
    from tests.conftest import TOKEN

    app = create_app(AppContext(settings=make_settings(), pool=pool, clock=FakeClock()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
        r = await api.post("/v1/dnc", content=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                             "Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["added"] == 2 and out["invalid"][0]["index"] == 3
