"""Campaign figures, each asserted exactly on calls made through the real paths: intake,
dispatch to the Ryng sandbox, callbacks through the callback service, a re-dial rule, all
on the injectable clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dialer.clock import FakeClock
from dialer.dispatch.chunker import call_ref
from dialer.dispatch.targets import set_paused
from dialer.lifecycle import payload
from dialer.results import figures
from tests.stack import Stack, running_stack

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # 10:00 in New York, 07:00 in Los Angeles
TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob", "carol"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 10, "chunk_size": 50, "max_dispose_s": 0,
          "recycle": {"no_answer": {"after_min": 1, "max": 1}}}
NY = ["+12125550101", "+12125550102", "+12125550103"]  # with timezone America/New_York
LA = ["+14155550104", "+14155550105", "+14155550106"]  # no timezone: the number's (Los Angeles)
LATER = ["+14155550201", "+14155550202", "+14155550203", "+14155550204"]


@dataclass
class Campaign:
    st: Stack
    clock: FakeClock
    ny: uuid.UUID  # three leads with their timezone: answered (60 s), answered (90 s), re-dialed
    la: uuid.UUID  # three leads and an invalid row: busy, answered, still queued
    later: uuid.UUID  # four leads posted while the target is paused


async def _end(st: Stack, number: str, disposition: str, attempt: int = 1, **extra: Any) -> None:
    """A terminal callback for the number's given attempt, through the callback service."""
    async with st.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT id, chunk_id FROM calls WHERE e164 = $1 AND attempt = $2",
                                  number, attempt)
    cb = payload.read({"event": "terminated", "disposition": disposition, "agent": "alice",
                       "customField10": call_ref(row["id"]), **extra})
    await st.service.store(row["chunk_id"], "terminal", cb)


@pytest.fixture
async def campaign(pool: asyncpg.Pool, make_settings: Any) -> AsyncIterator[Campaign]:
    clock = FakeClock(T0)
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)  # our callbacks drive
        ny = await st.post(NY, timezone="America/New_York")
        la = await st.post([*LA, "12345"])  # the bad row is no lead
        await st.dispatcher.tick()  # all six claimed and sent at T0
        states = await st.states()  # the sandbox may have assigned agents meanwhile
        assert sum(states.values()) == 6 and set(states) <= {"queued", "assigned"}
        await _end(st, NY[0], "ANSWERED", talkTime=60)
        await _end(st, NY[0], "ANSWERED", talkTime=999)  # a duplicate: recorded, never counted
        await _end(st, NY[1], "ANSWERED", talk_time="90")  # as a form body carries it
        await _end(st, NY[2], "NO_ANSWER")  # re-dialed after a minute
        await _end(st, LA[0], "BUSY")
        await _end(st, LA[1], "ANSWERED")  # no talk time reported
        clock.advance(2 * 3600)  # 17:00 UTC: noon in New York
        await st.dispatcher.tick()
        await _end(st, NY[2], "ANSWERED", attempt=2, duration=30)
        await set_paused(pool, "sales", True, "test", clock.now())
        later = await st.post(LATER)
        await st.dispatcher.tick()  # paused: nothing is sent
        await st.completion.check()  # the New York batch is done
        clock.advance(5 * 60)  # 17:05
        yield Campaign(st, clock, uuid.UUID(ny), uuid.UUID(la), uuid.UUID(later))


def hours_of(f: figures.Figures) -> dict[int, tuple[int, int]]:
    return {h.hour: (h.attempts, h.answered) for h in f.hours if h.attempts}


async def test_a_batch_figures_each_exactly(campaign: Campaign) -> None:
    now = campaign.clock.now()
    async with campaign.st.pool.acquire() as conn:
        ny = await figures.for_batch(conn, campaign.ny, now)
        la = await figures.for_batch(conn, campaign.la, now)
        later = await figures.for_batch(conn, campaign.later, now)
    assert (ny.leads, ny.attempts, ny.leads_attempted, ny.answered) == (3, 4, 3, 3)
    assert ny.penetration == 1.0 and ny.contact_rate == 3 / 4 and ny.attempts_per_lead == 4 / 3
    assert (ny.talk_reported, ny.talk_mean_s) == (3, 60.0)  # (60 + 90 + 30) / 3; the duplicate's 999 not
    assert hours_of(ny) == {10: (3, 2), 12: (1, 1)}  # the lead's own zone
    assert [h.hour for h in ny.hours] == list(range(24))
    assert ny.hours[10].answer_rate == 2 / 3 and ny.hours[11].answer_rate is None
    assert ny.exhaustion.remaining == 0 and ny.exhaustion.seconds == 0.0
    assert ny.exhaustion.reason == "nothing is waiting to be sent"

    assert (la.leads, la.attempts, la.leads_attempted, la.answered) == (3, 3, 3, 1)
    assert la.contact_rate == 1 / 3 and la.attempts_per_lead == 1.0
    assert (la.talk_reported, la.talk_mean_s) == (0, None)
    assert hours_of(la) == {7: (3, 1)}  # no timezone: the number's (+1415: Los Angeles)

    assert (later.leads, later.attempts, later.leads_attempted, later.answered) == (4, 0, 0, 0)
    assert later.penetration == 0.0 and later.contact_rate is None and later.attempts_per_lead is None
    assert hours_of(later) == {}
    e = later.exhaustion
    assert (e.remaining, e.sent_recently, e.seconds, e.at) == (4, 0, None, None)
    assert e.reason == "nothing was sent in the last 15 min: no pace to go by"


async def test_a_target_figures_cover_its_open_and_recent_batches(campaign: Campaign) -> None:
    now = campaign.clock.now()
    async with campaign.st.pool.acquire() as conn:
        day = await figures.for_target(conn, "sales", now)
        hour = await figures.for_target(conn, "sales", now, window_h=1)
        none = await figures.for_target(conn, "other", now)
    assert (day.batches, day.leads, day.attempts, day.leads_attempted, day.answered) == (3, 10, 7, 6, 4)
    assert day.penetration == 0.6 and day.contact_rate == 4 / 7 and day.attempts_per_lead == 7 / 6
    assert (day.talk_reported, day.talk_mean_s) == (3, 60.0)
    assert hours_of(day) == {7: (3, 1), 10: (3, 2), 12: (1, 1)}
    # four waiting; one attempt in the last 15 minutes (the re-dial at 17:00): an hour to go
    e = day.exhaustion
    assert (e.remaining, e.sent_recently, e.window_s) == (4, 1, 900)
    assert e.send_rate_per_min == 1 / 15 and e.seconds == 3600.0
    assert e.at == now + timedelta(hours=1) and e.reason is None
    # the last hour: the done New York batch (created at 15:00) drops out, the open ones stay
    assert (hour.batches, hour.leads, hour.attempts, hour.answered) == (2, 7, 3, 1)
    assert (none.batches, none.leads, none.penetration, none.exhaustion.seconds) == (0, 0, None, 0.0)


async def test_the_exhaustion_estimate_alone_matches(campaign: Campaign) -> None:
    now = campaign.clock.now()
    async with campaign.st.pool.acquire() as conn:
        e = await figures.target_exhaustion(conn, "sales", now)
    assert (e.remaining, e.sent_recently, e.seconds) == (4, 1, 3600.0)
    campaign.clock.advance(15 * 60)  # the re-dial leaves the window: no pace any more
    async with campaign.st.pool.acquire() as conn:
        e = await figures.target_exhaustion(conn, "sales", campaign.clock.now())
    assert (e.remaining, e.sent_recently, e.seconds) == (4, 0, None)


def test_a_number_is_read_in_the_zone_the_dispatcher_gives_it() -> None:
    """The shortcut for one-zone countries agrees with dispatch/hours.py on every example
    number phonenumbers has (zones that always show the same time count as one)."""
    import zoneinfo

    import phonenumbers

    from dialer.dispatch import hours

    known = frozenset(zoneinfo.available_timezones())
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
                     phonenumbers.PhoneNumberType.TOLL_FREE):
            ex = phonenumbers.example_number_for_type(region, kind)
            if ex is None:
                continue
            e164 = phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.E164)
            ours = figures._zone_of(e164, known)
            assert figures._same_time(ours, hours.zones_for(e164, None)[0].key), (region, e164, ours)
            checked += 1
    assert checked > 400
    assert figures._zone_of("+442071234567", known) in ("Europe/London", "Europe/Guernsey")  # shortcut
    assert figures._zone_of("tz:Asia/Tokyo", known) == "Asia/Tokyo"
    assert figures._zone_of("tz:Mars/Base", known) == "UTC"  # PostgreSQL would not know it


async def test_a_lead_whose_first_number_never_went_counts_as_attempted_by_its_second(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """Penetration is leads attempted / leads: a lead whose first number was DNC-listed
    before it was sent, and that went on to dial its second number, was attempted."""
    from dialer.intake import dnc

    clock = FakeClock(T0)
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        bid = await st.post(["+14155550101"], number2="+14155550102")
        await dnc.add_numbers(pool, ["+14155550101"], source="api", now=clock.now(),
                              targets=st.settings.targets)
        await st.dispatcher.tick()
        rows = await pool.fetch("SELECT attempt, e164, submitted_at IS NOT NULL AS sent FROM calls ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "+14155550101", False), (2, "+14155550102", True)]
        async with pool.acquire() as conn:
            f = await figures.for_batch(conn, uuid.UUID(bid), clock.now())
        assert (f.leads, f.attempts, f.leads_attempted, f.penetration) == (1, 1, 1, 1.0)


async def test_expired_soon_reads_a_fractional_lead_ttl(pool: asyncpg.Pool, make_settings: Any) -> None:
    from dialer.dispatch import waiting

    clock = FakeClock(T0)
    async with running_stack(pool, make_settings, clock=clock,
                             targets={"sales": {**TARGET, "lead_ttl_h": 1.5}}) as st:
        await st.post(["+14155550101"])
        t = st.settings.targets["sales"]

        async def expiring() -> tuple[int, datetime | None]:
            async with pool.acquire() as conn:
                w = await waiting.for_target(conn, "sales", t, st.dispatcher, False, clock.now())
            r = next((r for r in w.reasons if r.reason == "expired_soon"), None)
            return (r.count, r.clears_at) if r is not None else (0, None)

        assert (await expiring())[0] == 0  # 90 min left: not within the hour
        clock.advance(45 * 60)
        assert await expiring() == (1, T0 + timedelta(minutes=90))
