"""Campaign figures in /metrics: the figures of a campaign made through the real paths,
read at scrape time (labels bounded: target and hour of day)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dialer import metrics
from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.results import figures
from tests.conftest import await_for
from tests.results.test_figures import Campaign, campaign  # noqa: F401 (a fixture)


def samples(text: str, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith(prefix)}


async def test_figures_are_exported_at_scrape_time(campaign: Campaign) -> None:  # noqa: F811
    st = campaign.st
    app = create_app(AppContext(settings=st.settings, pool=st.pool, clock=campaign.clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        text = (await c.get("/metrics")).text
    got = samples(text, "dialer_target_")
    sales = (("target", "sales"),)
    assert got[("dialer_target_leads", sales)] == 10
    assert got[("dialer_target_attempts", sales)] == 7
    assert got[("dialer_target_answered", sales)] == 4
    assert got[("dialer_target_penetration_ratio", sales)] == 0.6
    assert got[("dialer_target_contact_rate", sales)] == 4 / 7
    assert got[("dialer_target_attempts_per_lead", sales)] == 7 / 6
    assert got[("dialer_target_talk_seconds_mean", sales)] == 60.0
    assert got[("dialer_target_remaining_calls", sales)] == 4
    assert got[("dialer_target_exhaustion_seconds", sales)] == 3600.0
    by_hour = {dict(k[1])["hour"]: v for k, v in got.items()
               if k[0] == "dialer_target_hour_attempts" and dict(k[1])["target"] == "sales"}
    assert sorted(by_hour, key=int) == [str(h) for h in range(24)]
    assert {h: v for h, v in by_hour.items() if v} == {"7": 3, "10": 3, "12": 1}
    assert got[("dialer_target_hour_answered", (("hour", "10"), ("target", "sales")))] == 2
    # only configured targets, and hours 0-23: the labels stay bounded
    assert {dict(k[1])["target"] for k in got} == {"sales"}


async def test_a_figure_that_cannot_be_told_has_no_sample(campaign: Campaign) -> None:  # noqa: F811
    campaign.clock.advance(15 * 60)  # nothing sent in the last 15 minutes: no pace
    st = campaign.st
    app = create_app(AppContext(settings=st.settings, pool=st.pool, clock=campaign.clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        got = samples((await c.get("/metrics")).text, "dialer_target_")
    assert ("dialer_target_exhaustion_seconds", (("target", "sales"),)) not in got
    assert got[("dialer_target_remaining_calls", (("target", "sales"),))] == 4


async def test_a_slow_figures_read_never_holds_a_scrape_past_its_wait(
        campaign: Campaign, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """With millions of calls waiting, the figures' pass over them takes seconds: a scrape
    answers with the last readings after ``slow_wait_s`` while the read goes on (one at a
    time), and a later scrape shows what it read. The read is held here by a gate."""
    st = campaign.st
    ctx = AppContext(settings=st.settings, pool=st.pool, clock=campaign.clock)
    m = metrics.for_context(ctx)
    m.min_refresh_s = 0
    app = create_app(ctx)
    gate, reads = anyio.Event(), []
    real = figures.target_exhaustion

    async def held(*args: Any) -> figures.Exhaustion:
        reads.append(args)
        await gate.wait()
        return await real(*args)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        remaining = ("dialer_target_remaining_calls", (("target", "sales"),))
        assert samples((await c.get("/metrics")).text, "dialer_target_")[remaining] == 4
        monkeypatch.setattr(figures, "target_exhaustion", held)
        m.slow_wait_s = 0.2
        async with st.pool.acquire() as conn:  # one waiting call fewer, not yet read
            await conn.execute("UPDATE calls SET state = 'cancelled', ended_at = now() WHERE id = "
                               "(SELECT min(id) FROM calls WHERE target = 'sales' AND state = 'pending')")
        for _ in range(2):
            with anyio.fail_after(30):  # a hang guard, not a measurement
                got = samples((await c.get("/metrics")).text, "dialer_target_")
            assert got[remaining] == 4  # the last reading
        assert len(reads) == 1  # the second scrape did not start a read of its own
        gate.set()

        async def read_anew() -> bool:
            return samples((await c.get("/metrics")).text, "dialer_target_")[remaining] == 3

        await await_for(read_anew, 30, "a scrape to show the read that was held")
