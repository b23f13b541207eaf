"""One runtime for the daemon and the tests; a SIGHUP reload goes through it."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg

from dialer.clock import FakeClock
from dialer.runtime import assemble

SALES = {"queue_id": "1", "agents": ["alice"], "calling_hours": "00:00-24:00"}


async def test_a_target_added_by_reload_obeys_the_global_holidays(pool: asyncpg.Pool, make_settings: Any,
                                                                  clock: FakeClock) -> None:
    s = make_settings(targets={"sales": SALES}, compliance={"holidays": ["2026-12-25"]})
    rt = assemble(s, pool, clock, secret=b"k", instance_id="t", ryng_url="http://127.0.0.1:9", ryng_token="x")
    try:
        new = make_settings(targets={"sales": SALES, "support": {**SALES, "holidays": ["2026-12-24"]}},
                            compliance={"holidays": ["2026-12-25"]})
        rt.reconfigure(new)
        holidays = rt.dispatcher.rules.holidays
        assert holidays["support"] == frozenset({date(2026, 12, 24), date(2026, 12, 25)})
        assert "support" in rt.dispatcher.breakers
        # every part sees the new targets
        for part in (rt.ctx, rt.dispatcher, rt.service, rt.inbox, rt.ingestor, rt.jobs, rt.providers):
            assert set(part.settings.targets) == {"sales", "support"}  # type: ignore[union-attr]
    finally:
        await rt.aclose()
