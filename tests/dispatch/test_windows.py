"""Lead expiry and campaign windows: an expired lead is never sent and ends ``expired``
with the reason; outside a target's window nothing is sent and the hold says until when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.config import load_settings
from dialer.dispatch import windows
from dialer.errors import ConfigError
from tests.stack import Stack, running_stack

TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "09:00-20:00", "calls_per_agent": 2, "chunk_size": 10, "max_dispose_s": 0}
CHICAGO = "+13125550100"  # America/Chicago: CST is UTC-6 in January
NIGHT = datetime(2026, 1, 6, 9, 0, tzinfo=UTC)  # 03:00 in Chicago: before calling hours


async def events(pool: asyncpg.Pool, kind: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(
            "SELECT call_id, from_state, to_state, payload FROM call_events WHERE kind = $1 ORDER BY id", kind)]


async def sent(st: Stack) -> int:
    return len(st.sandbox.submissions_by_ref("customField10"))


async def test_a_lead_expiring_during_a_calling_hours_hold_ends_expired_never_sent(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(NIGHT)
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await st.post([CHICAGO], expires_at="2026-01-06T07:00")  # 07:00 Chicago: before 09:00
        await st.dispatcher.tick()
        assert await st.states() == {"scheduled": 1}
        hold = (await events(pool, "hold"))[0]["payload"]
        # held by calling hours, but only until the lead expires (13:00 UTC), not until 09:00
        assert hold["rule"] == "calling_hours" and hold["until"] == "2026-01-06T13:00:00+00:00"
        assert hold["expires_at"] == "2026-01-06T13:00:00+00:00"
        clock.advance(3 * 3600 + 59 * 60)
        await st.dispatcher.tick()
        assert await st.states() == {"scheduled": 1}
        clock.advance(60)
        await st.dispatcher.tick()
        assert await st.states() == {"expired": 1}
        ev = (await events(pool, "expired"))[0]
        assert ev["from_state"] == "scheduled" and ev["payload"]["rule"] == "expires_at"
        assert ev["payload"]["expired_at"] == "2026-01-06T13:00:00+00:00"
        clock.advance(6 * 3600)  # calling hours open: still nothing
        await st.dispatcher.tick()
        assert await sent(st) == 0


async def test_lead_ttl_h_counts_from_the_batch(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(NIGHT)
    target = {**TARGET, "lead_ttl_h": 2}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        await st.post([CHICAGO, "+13125550101"])
        await st.post(["+13125550102"], expires_at="2026-01-06T10:00:00Z")  # sooner than the TTL
        await st.dispatcher.tick()
        until = {e["payload"]["until"] for e in await events(pool, "hold")}
        assert until == {"2026-01-06T11:00:00+00:00", "2026-01-06T10:00:00+00:00"}
        clock.advance(2 * 3600)
        await st.dispatcher.tick()
        assert await st.states() == {"expired": 3} and await sent(st) == 0
        rules = sorted(e["payload"]["rule"] for e in await events(pool, "expired"))
        assert rules == ["expires_at", "lead_ttl_h", "lead_ttl_h"]


async def test_an_expired_lead_is_taken_out_at_send_time(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(datetime(2026, 1, 6, 18, 0, tzinfo=UTC))  # noon in Chicago
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await st.post([CHICAGO], expires_at="2026-01-06T18:00:30Z")
        await st.post(["+13125550101"])
        await st.dispatcher.fill_all()  # recorded, not yet sent
        clock.advance(60)  # the send waited (a retry, the breaker): the lead expired meanwhile
        await st.dispatcher.send_all()
        states = await st.states()
        assert states.get("expired") == 1 and await sent(st) == 1
        ev = (await events(pool, "expired"))[0]
        assert ev["from_state"] == "submitting" and ev["payload"]["at"] == "send"
        async with pool.acquire() as conn:  # never sent: not an attempt
            assert await conn.fetchval("SELECT submitted_at FROM calls WHERE state = 'expired'") is None


async def test_a_calling_hours_hold_at_send_time_lasts_only_until_the_lead_expires(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(datetime(2026, 1, 7, 1, 59, 30, tzinfo=UTC))  # 19:59:30 in Chicago
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        await st.post([CHICAGO], expires_at="2026-01-07T08:00")  # 08:00 Chicago next morning
        await st.dispatcher.fill_all()  # recorded inside calling hours, not yet sent
        clock.advance(60)  # 20:00:30: the send waited past the window's end
        await st.dispatcher.send_all()
        assert await sent(st) == 0 and await st.states() == {"scheduled": 1}
        hold = next(e["payload"] for e in await events(pool, "hold") if e["payload"].get("at") == "send")
        # not until 09:00 when the window opens: the lead is gone at 08:00
        assert hold["until"] == "2026-01-07T14:00:00+00:00" and hold["rule"] == "calling_hours"
        clock.advance(12 * 3600)  # 08:00:30 Chicago
        await st.dispatcher.tick()
        assert await st.states() == {"expired": 1} and await sent(st) == 0


@pytest.mark.parametrize(("cfg", "rule", "until"), [
    ({"active_from": "2026-01-07"}, "active_from", "2026-01-07T06:00:00+00:00"),
    ({"blocked": ["2026-01-06"]}, "blocked", "2026-01-07T06:00:00+00:00"),
    ({"blocked": ["2026-01-06T11:00/PT3H", "2026-01-06T13:30/2026-01-06T15:00"]}, "blocked",
     "2026-01-06T21:00:00+00:00"),
])
async def test_outside_the_targets_window_nothing_is_sent_and_the_hold_says_until_when(
        pool: asyncpg.Pool, make_settings: Any, cfg: dict[str, Any], rule: str, until: str) -> None:
    clock = FakeClock(datetime(2026, 1, 6, 18, 0, tzinfo=UTC))  # noon in Chicago: calling hours
    target = {**TARGET, "calling_hours": "00:00-24:00", "window_timezone": "America/Chicago", **cfg}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        await st.post([CHICAGO, "+13125550101"])
        await st.dispatcher.tick()
        assert await st.states() == {"scheduled": 2} and await sent(st) == 0
        holds = await events(pool, "hold")
        assert {(e["payload"]["rule"], e["payload"]["until"]) for e in holds} == {(rule, until)}
        clock.advance((datetime.fromisoformat(until) - clock.now()).total_seconds())
        await st.dispatcher.tick()
        assert await sent(st) == 2


async def test_past_active_until_the_leads_end_expired(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(datetime(2026, 1, 6, 18, 0, tzinfo=UTC))
    target = {**TARGET, "active_until": "2026-01-05"}
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": target}) as st:
        await st.post([CHICAGO])
        await st.dispatcher.tick()
        assert await st.states() == {"expired": 1} and await sent(st) == 0
        ev = (await events(pool, "expired"))[0]["payload"]
        assert ev["rule"] == "active_until" and "campaign ended at 2026-01-06T00:00:00+00:00" in ev["reason"]


def test_periods_and_instants() -> None:
    z = "Europe/Berlin"
    assert windows.instant("2026-12-24", z) == datetime(2026, 12, 23, 23, 0, tzinfo=UTC)
    assert windows.instant("2026-12-24", z, end_of_day=True) == datetime(2026, 12, 24, 23, 0, tzinfo=UTC)
    p = windows.period("2026-12-24/2026-12-26", z)  # a date at the end: that whole day
    assert (p.start, p.end) == (datetime(2026, 12, 23, 23, tzinfo=UTC), datetime(2026, 12, 26, 23, tzinfo=UTC))
    p = windows.period("2026-12-24T12:00Z/P1DT6H", z)
    assert p.end - p.start == timedelta(days=1, hours=6)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("active_from", "next week", "targets.sales.active_from: Value error, 'next week' is not an ISO 8601"),
    ("blocked", ["2026-12-24/P1Y"], "targets.sales.blocked: Value error, [0] '2026-12-24/P1Y'"),
    ("blocked", ["2026-12-26/2026-12-24"], "ends before it starts"),
    ("window_timezone", "Mars/Olympus", "targets.sales.window_timezone: Value error, 'Mars/Olympus' is not"),
    ("lead_ttl_h", 0, "targets.sales.lead_ttl_h"),
])
def test_bad_window_config_names_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, environ={}, overrides={"targets": {"sales": {"queue_id": "1", key: value}}})
    assert message in str(e.value)


def test_toml_dates_are_taken_as_they_are(tmp_path: Any) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('[targets.sales]\nqueue_id = "1"\nactive_from = 2026-12-01\nactive_until = 2026-12-31\n'
                   'blocked = [2026-12-24, "2026-12-25T00:00/PT48H"]\n')
    t = load_settings(cfg, environ={}).targets["sales"]
    assert (t.active_from, t.active_until, t.blocked) == ("2026-12-01", "2026-12-31",
                                                           ["2026-12-24", "2026-12-25T00:00/PT48H"])
    with pytest.raises(ConfigError, match="active_until must be after active_from"):
        load_settings(None, environ={}, overrides={"targets": {"sales": {
            "queue_id": "1", "active_from": "2026-12-02", "active_until": "2026-12-01"}}})
