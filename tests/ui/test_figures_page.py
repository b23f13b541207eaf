"""Campaign figures on the console (in-process): a target's page and the batch page show
the figures and the hourly answer rate drawn server-side as inline SVG."""

from __future__ import annotations

import re

import httpx

from dialer.http.app import create_app
from dialer.http.context import AppContext
from dialer.http.figures import HourOut
from dialer.ui.figures import hour_chart
from tests.results.test_figures import Campaign, campaign  # noqa: F401 (a fixture)
from tests.ui.conftest import BASE, log_in


def _figure(html: str, name: str) -> str:
    m = re.search(rf'data-figure="{name}">(.*?)</dd>', html, re.S)
    assert m, name
    return re.sub(r"<[^>]+>", "", m.group(1)).split()[0]


async def test_target_and_batch_pages_show_the_figures_and_the_hour_chart(campaign: Campaign) -> None:  # noqa: F811
    st = campaign.st
    app = create_app(AppContext(settings=st.settings, pool=st.pool, clock=campaign.clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        assert (await log_in(c)).status_code == 303
        targets = (await c.get("/ui/targets")).text
        assert '<a href="/ui/targets/sales">sales</a>' in targets
        page = await c.get("/ui/targets/sales")
        assert page.status_code == 200
        html = page.text
        assert [_figure(html, k) for k in ("leads", "attempts", "penetration", "contact_rate",
                                           "attempts_per_lead", "talk_mean_s")] == \
            ["10", "7", "60.0%", "57.1%", "1.17", "60"]
        assert "done in about 60 min" in html and "0.1 calls/min" in html
        svg = html[html.index('<svg class="chart hours"'):]
        svg = svg[:svg.index("</svg>") + 6]
        assert 'role="img"' in svg and "07h: 1 of 3, 10h: 2 of 3, 12h: 1 of 1" in svg
        assert len(re.findall(r"<rect ", svg)) == 3  # one bar per hour with attempts
        assert "10:00-10:59: 2 answered of 3 attempts (67%)" in svg
        assert "https://" not in svg and "http://" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
        # a narrower window: the New York batch (done, received at 15:00) drops out
        assert _figure((await c.get("/ui/targets/sales?window_h=1")).text, "leads") == "7"
        assert (await c.get("/ui/targets/nope")).status_code == 404

        batch = (await c.get(f"/ui/batches/{campaign.later}")).text
        assert _figure(batch, "leads") == "4" and _figure(batch, "penetration") == "0.0%"
        assert "nothing was sent in the last 15 min" in batch and "No attempt yet" in batch
        batch = (await c.get(f"/ui/batches/{campaign.ny}")).text
        assert _figure(batch, "contact_rate") == "75.0%" and '<svg class="chart hours"' in batch
        assert '<svg class="chart"' in batch  # the outcomes chart is still there
        live = (await c.get(f"/ui/batches/{campaign.ny}?part=summary")).text
        assert "data-figure" not in live  # figures are counted once per page load


def test_hour_chart_escapes_and_marks_unanswered_hours() -> None:
    hours = [HourOut(hour=h, attempts=2 if h in (9, 14) else 0, answered=1 if h == 9 else 0,
                     answer_rate=(0.5 if h == 9 else 0.0) if h in (9, 14) else None) for h in range(24)]
    svg = str(hour_chart(hours, title="<b>&"))
    assert "&lt;b&gt;&amp;" in svg and "<b>" not in svg
    assert 'fill="#1f7a3a"' in svg and 'fill="#b3261e"' in svg  # answered / none answered
    assert "14:00-14:59: 0 answered of 2 attempts (0%)" in svg
