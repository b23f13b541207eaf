"""The console's call view with its *Schedule callback* form (CSRF like every form) and the
*Callbacks* page: overdue, due today and upcoming, per agent."""

from __future__ import annotations

import asyncpg

from dialer.clock import FakeClock
from dialer.config import Settings
from dialer.intake.submit import Submission, submit
from dialer.lifecycle import moves
from dialer.lifecycle.states import State
from tests.ui.conftest import Console


async def ended_call(pool: asyncpg.Pool, settings: Settings, clock: FakeClock, number: str) -> int:
    _, out = await submit(pool, settings, clock, Submission(target="sales", rows=[{"number": number}]))
    async with pool.acquire() as conn, conn.transaction():
        cid = int(await conn.fetchval("SELECT id FROM calls WHERE batch_id = $1", out["batch_id"]))
        await moves.end_calls(conn, [cid], State.PENDING, State.ANSWERED, "test", clock.now())
    return cid


async def test_schedule_a_callback_from_the_call_view(console: Console, pool: asyncpg.Pool, settings: Settings,
                                                      clock: FakeClock) -> None:
    cid = await ended_call(pool, settings, clock, "+13125550100")  # Chicago: 06:00 local now
    page = await console.c.get(f"/ui/calls/{cid}")
    assert page.status_code == 200 and "Schedule callback" in page.text and "America/Chicago" in page.text
    r = await console.c.post(f"/ui/calls/{cid}/schedule", data={"at": "2026-01-05T15:00", "agent": "bob"})
    assert r.status_code == 403  # no CSRF token
    r = await console.post(f"/ui/calls/{cid}/schedule", {"at": "", "agent": "bob"})
    assert r.status_code == 422 and "Choose when" in r.text
    r = await console.post(f"/ui/calls/{cid}/schedule", {"at": "2026-01-05T03:00", "agent": "bob"})
    assert r.status_code == 422 and "in the past" in r.text
    r = await console.post(f"/ui/calls/{cid}/schedule", {"at": "2026-01-05T15:00", "agent": "bob"})
    assert r.status_code == 303, r.text
    page = (await console.c.get(r.headers["location"])).text
    assert "Callback scheduled" in page
    async with pool.acquire() as conn:
        k = await conn.fetchrow("SELECT owner, due_at, source FROM callbacks")
    assert k["owner"] == "bob" and k["source"] == "console"
    assert k["due_at"].isoformat() == "2026-01-05T21:00:00+00:00"  # 15:00 in Chicago
    r = await console.post(f"/ui/calls/{cid}/schedule", {"at": "2026-01-05T16:00"})
    assert r.status_code == 409 and "live attempt" in r.text
    assert (await console.c.get("/ui/calls/999999")).status_code == 404


async def test_the_callbacks_page_buckets_them_per_agent(console: Console, pool: asyncpg.Pool,
                                                         settings: Settings, clock: FakeClock) -> None:
    a = await ended_call(pool, settings, clock, "+13125550101")
    b = await ended_call(pool, settings, clock, "+13125550102")
    assert (await console.post(f"/ui/calls/{a}/schedule", {"at": "2026-01-05T06:30", "agent": "alice"})
            ).status_code == 303
    assert (await console.post(f"/ui/calls/{b}/schedule", {"at": "2026-01-09T10:00", "agent": "carol"})
            ).status_code == 303
    clock.advance(3600)  # alice's is 30 minutes past due: overdue after the 15-minute grace
    page = await console.c.get("/ui/callbacks")
    assert page.status_code == 200
    text = page.text
    overdue = text.split('id="cb-overdue-h"', 1)[1].split('id="cb-today-h"', 1)[0]
    upcoming = text.split('id="cb-upcoming-h"', 1)[1]
    assert "+13125550101" in overdue and "alice" in overdue
    assert "+13125550102" in upcoming and "carol" in upcoming and "+13125550102" not in overdue
    only_carol = (await console.c.get("/ui/callbacks?agent=carol")).text
    assert "+13125550102" in only_carol and "+13125550101" not in only_carol


def test_due_today_follows_each_targets_day_not_the_servers() -> None:
    """At 03:00 UTC it is still the evening before in Los Angeles: a callback due at
    05:00 UTC (21:00 there) is due today for a Los Angeles team, while for a team on UTC
    today ends at midnight UTC, 21 hours later, so it is due today there too; one due at
    10:00 UTC is tomorrow (02:00) in Los Angeles but today on UTC."""
    from datetime import UTC, datetime

    from dialer.ui.callbacks import bucketed

    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)

    def row(target: str, due_hour: int, call_id: int) -> dict[str, object]:
        return {"status": "upcoming", "due_at": datetime(2026, 12, 6, due_hour, 0, tzinfo=UTC),
                "target": target, "owner": None, "call_id": call_id}

    rows = [row("west", 5, 1), row("west", 10, 2), row("utc", 10, 3), row("utc", 23, 4)]
    groups = bucketed(rows, now, {"west": "America/Los_Angeles", "utc": "UTC"})
    assert [r["call_id"] for r in groups["today"]] == [1, 3, 4]
    assert [r["call_id"] for r in groups["upcoming"]] == [2]
    # a target the settings no longer know falls back to UTC
    assert [r["call_id"] for r in bucketed([row("gone", 23, 5)], now, {})["today"]] == [5]
