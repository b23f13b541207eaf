"""The customer's "do not call" (SPEC §9) holds whatever order things happen in: a DNC
disposition that arrives after the call already ended still lists the number, and a later
add or import never shortens a listing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from dialer.clock import FakeClock
from dialer.dispatch.chunker import call_ref
from dialer.intake import dnc
from dialer.lifecycle import payload
from dialer.lifecycle.events import Applied
from tests.conftest import await_for
from tests.stack import Stack, running_stack

T0 = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
TARGET = {"queue_id": "42", "agent_mapping": "global", "agents": ["alice", "bob"],
          "calling_hours": "00:00-24:00", "calls_per_agent": 10, "chunk_size": 50, "max_dispose_s": 0}
QUIET = {"time_scale": 1000.0, "agent_pickup_s": 1000.0}  # no callback past the connect one


async def _terminal(st: Stack, call_id: int, disposition: str) -> Applied:
    row = await st.pool.fetchrow("SELECT chunk_id FROM calls WHERE id = $1", call_id)
    cb = payload.read({"event": "terminated", "disposition": disposition, "agent": "alice",
                       "customField10": call_ref(call_id)})
    return await st.service.store(row["chunk_id"], "terminal", cb)


@contextlib.asynccontextmanager
async def _one_call_sent(pool: asyncpg.Pool, make_settings: Any, clock: FakeClock,
                         **settings: Any) -> AsyncIterator[tuple[Stack, int]]:
    """A stack whose sandbox stays quiet, with one lead for +14155550101 sent: (stack, call id)."""
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}, **settings) as st:
        st.sandbox.configure(**QUIET)
        await st.post(["+14155550101"])
        await st.dispatcher.tick()
        call_id = int(await pool.fetchval("SELECT id FROM calls"))

        async def assigned() -> bool:
            return await pool.fetchval("SELECT state FROM calls WHERE id = $1", call_id) == "assigned"

        # the sandbox's connect callback comes at once (agent-first): applied after a clock
        # advance, it would make the call look fresh to the reaper
        await await_for(assigned, 30, "the connect callback")
        yield st, call_id


async def _listing(pool: asyncpg.Pool, e164: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT source, expires_at FROM dnc WHERE e164 = $1", e164)
    return dict(row) if row else None


async def test_a_dnc_disposition_after_the_call_was_reaped_still_lists_the_number(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(T0)
    async with _one_call_sent(pool, make_settings, clock, stale_after_h=1) as (st, call_id):
        clock.advance(2 * 3600)
        await st.rt.jobs.reaper()
        assert await pool.fetchval("SELECT state FROM calls WHERE id = $1", call_id) == "expired"
        result = await _terminal(st, call_id, "DNC")
        assert result.result == "duplicate"  # the call stays expired: state only moves forward
        assert (await _listing(pool, "+14155550101")) == {"source": "disposition", "expires_at": None}
        assert await pool.fetchval("SELECT state FROM calls WHERE id = $1", call_id) == "expired"
        # and a new lead for the number is not dialed
        clock.advance(25 * 3600)
        await st.post(["+14155550101"])
        assert await pool.fetchval("SELECT state FROM calls ORDER BY id DESC LIMIT 1") == "dnc"


async def test_a_repeated_dnc_callback_lists_once_and_changes_nothing(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(T0)
    async with _one_call_sent(pool, make_settings, clock) as (st, call_id):
        assert (await _terminal(st, call_id, "DNC")).result == "applied"
        ended = await pool.fetchrow("SELECT state, ended_at FROM calls WHERE id = $1", call_id)
        clock.advance(60)
        assert (await _terminal(st, call_id, "DNC")).result == "duplicate"
        assert await pool.fetchval("SELECT count(*) FROM dnc") == 1
        assert await pool.fetchrow("SELECT state, ended_at FROM calls WHERE id = $1", call_id) == ended
        assert await pool.fetchval("SELECT added_at FROM dnc") == T0


async def test_an_import_with_an_expiry_never_shortens_a_disposition_listing(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(T0)
    async with _one_call_sent(pool, make_settings, clock) as (st, call_id):
        await _terminal(st, call_id, "DNC")
        # the registry's file lists the number until tomorrow; the API adds it for a week
        await dnc.import_bytes(pool, b"4155550101,2026-12-02\n", region="US", source="registry.csv",
                               now=clock.now(), targets=st.settings.targets)
        await dnc.add_numbers(pool, ["+14155550101"], source="api", now=clock.now(),
                              targets=st.settings.targets, expires_at=T0 + timedelta(days=7))
        assert (await _listing(pool, "+14155550101")) == {"source": "disposition", "expires_at": None}
        clock.advance(10 * 86400)
        await st.post(["+14155550101"])
        assert await pool.fetchval("SELECT state FROM calls ORDER BY id DESC LIMIT 1") == "dnc"


async def test_a_later_expiry_extends_a_listing_and_an_earlier_one_does_not(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(T0)
    async with running_stack(pool, make_settings, clock=clock, targets={"sales": TARGET}) as st:
        targets = st.settings.targets
        await dnc.import_bytes(pool, b"4155550101,2026-12-10\n4155550102,2026-12-10\n", region="US",
                               source="a.csv", now=clock.now(), targets=targets)
        await dnc.import_bytes(pool, b"4155550101,2026-12-20\n4155550102,2026-12-05\n", region="US",
                               source="b.csv", now=clock.now(), targets=targets)
        one, two = await _listing(pool, "+14155550101"), await _listing(pool, "+14155550102")
        assert one is not None and two is not None
        assert (one["source"], one["expires_at"].date().isoformat()) == ("b.csv", "2026-12-20")
        assert (two["source"], two["expires_at"].date().isoformat()) == ("a.csv", "2026-12-10")
        await dnc.add_numbers(pool, ["+14155550102"], source="api", now=clock.now(), targets=targets)
        assert (await _listing(pool, "+14155550102")) == {"source": "api", "expires_at": None}


async def test_the_customers_own_word_is_the_listings_source_over_a_registry_listing(
        pool: asyncpg.Pool, make_settings: Any) -> None:
    """A number a registry listed for good, then a DNC disposition: the row says the
    customer asked (an operator pruning registry numbers must not delete it unawares)."""
    clock = FakeClock(T0)
    async with _one_call_sent(pool, make_settings, clock) as (st, call_id):
        await dnc.import_bytes(pool, b"4155550101\n", region="US", source="registry.csv",
                               now=clock.now(), targets=st.settings.targets)
        await _terminal(st, call_id, "DNC")
        assert (await _listing(pool, "+14155550101")) == {"source": "disposition", "expires_at": None}
